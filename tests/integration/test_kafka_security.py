"""A secure Kafka refuses what it must, says why, and loses nothing (issue 13).

Against the cluster the test backend found: skipped with the reason when it runs in
plaintext mode. Each refusal asserts the error the user sees and that the pipeline's
topics are unchanged (high watermarks). Also: the kcat command of docs/contracts.md
works with TLS + SCRAM, and no secret appears in the logs of a run (the Kafka nodes',
a producer's and a stream worker's).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from kcat_tool import KcatUnavailable, kcat_env

from infra import certs
from infra.kafka_clients import admin_config, consumer_config
from infra.security import KAFKA_PRINCIPALS, read_secret
from infra.settings import PipelineSettings
from schemas import topics

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def secure(kafka_cluster: Any, cluster_backend: Any) -> PipelineSettings:
    s: PipelineSettings = cluster_backend.settings()
    if not s.security.secure:
        pytest.skip(
            "the Kafka cluster the tests found runs in plaintext mode "
            "(PIPELINE_SECURITY__MODE=plaintext); these tests need a secure one"
        )
    s.kafka.bootstrap_servers = kafka_cluster.get_bootstrap_server()
    return s


def _client_conf(s: PipelineSettings, **over: Any) -> dict[str, Any]:
    """The admin principal's connection settings, with `over` replacing some."""
    conf = {k: v for k, v in admin_config(s.kafka).items()}
    for k, v in over.items():
        key = k.replace("_", ".")
        if v is None:
            conf.pop(key, None)
        else:
            conf[key] = v
    return conf


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _refusal(conf: dict[str, Any]) -> str:
    """Try to read cluster metadata; return every error and log line the client gave:
    what the user of a librdkafka client sees."""
    seen = _Collect()
    logger = logging.getLogger(f"k-sec-client-{uuid.uuid4().hex[:6]}")
    logger.addHandler(seen)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    errors = seen.lines
    full: dict[str, Any] = {**conf, "error_cb": lambda e: errors.append(str(e)), "logger": logger}
    admin = AdminClient(full)
    try:
        admin.list_topics(timeout=TIMEOUT_S)
    except Exception as e:  # KafkaException: the refusal we expect
        errors.append(str(e))
    else:
        pytest.fail("the cluster answered a client it should have refused")
    admin.poll(1.0)  # error and log callbacks are served by poll
    return "\n".join(errors)


def _watermarks(s: PipelineSettings) -> dict[str, int]:
    """Sum of high watermarks per pipeline topic (read as admin)."""
    c = Consumer(consumer_config(s.kafka, f"k-sec-probe-{uuid.uuid4().hex[:8]}"))
    try:
        md = c.list_topics(timeout=TIMEOUT_S)
        out = {}
        for t in [spec.name for spec in s.kafka.topics()]:
            parts = md.topics[t].partitions
            out[t] = sum(
                c.get_watermark_offsets(TopicPartition(t, p), timeout=TIMEOUT_S)[1] for p in parts
            )
        return out
    finally:
        c.close()


@pytest.fixture
def unchanged(secure: PipelineSettings) -> Iterator[None]:
    before = _watermarks(secure)
    yield
    assert _watermarks(secure) == before, "a refused client changed the pipeline's topics"


def _as(s: PipelineSettings, principal: str) -> dict[str, Any]:
    secrets_dir = s.security.resolved_secrets_dir()
    return _client_conf(
        s, sasl_username=principal, sasl_password=read_secret(secrets_dir, "kafka", principal)
    )


# -- refusals ---------------------------------------------------------------------------


def test_a_plaintext_client_is_refused(secure: PipelineSettings, unchanged: None) -> None:
    conf = _client_conf(
        secure,
        security_protocol=None,
        sasl_mechanism=None,
        sasl_username=None,
        sasl_password=None,
        ssl_ca_location=None,
        ssl_endpoint_identification_algorithm=None,
    )
    msg = _refusal(conf)
    assert "incorrect security.protocol configuration" in msg or "Disconnected" in msg, msg


def test_a_client_that_does_not_trust_the_ca_is_refused(
    secure: PipelineSettings, unchanged: None, tmp_path: Path
) -> None:
    other_ca, _ = certs.ensure_ca(tmp_path, name="some other CA")
    msg = _refusal(_client_conf(secure, ssl_ca_location=str(other_ca)))
    assert "SSL handshake failed" in msg and "certificate verify failed" in msg, msg


def test_a_wrong_scram_password_is_refused(secure: PipelineSettings, unchanged: None) -> None:
    msg = _refusal(_client_conf(secure, sasl_password="not-the-password"))
    assert "Authentication failed" in msg and "invalid credentials" in msg, msg
    assert "not-the-password" not in msg


def test_an_unknown_user_is_refused(secure: PipelineSettings, unchanged: None) -> None:
    msg = _refusal(_client_conf(secure, sasl_username=f"nobody-{uuid.uuid4().hex[:6]}"))
    assert "Authentication failed" in msg and "invalid credentials" in msg, msg


def test_the_producer_cannot_write_predictions(secure: PipelineSettings, unchanged: None) -> None:
    reports: list[KafkaError | None] = []
    p = Producer({**_as(secure, "producer"), "acks": "all", "message.timeout.ms": 15000})
    p.produce(topics.PREDICTIONS, b"forged", key=b"k", on_delivery=lambda e, m: reports.append(e))
    p.flush(30)
    assert len(reports) == 1 and reports[0] is not None, "the forged record was accepted"
    assert reports[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, reports[0]
    assert "Topic authorization failed" in str(reports[0])


def test_the_producer_cannot_read_raw_images(secure: PipelineSettings, unchanged: None) -> None:
    c = Consumer(
        {
            **_as(secure, "producer"),
            "group.id": f"k-sec-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        c.assign([TopicPartition(topics.RAW, 0, 0)])
        deadline = time.monotonic() + 30
        seen: list[KafkaError] = []
        # The group is refused first (FindCoordinator), then the fetch of the topic.
        while time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is None:
                continue
            err = m.error()
            assert err is not None, "the producer principal read an image"
            seen.append(err)
            if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                break
        codes = {e.code() for e in seen}
        assert KafkaError.TOPIC_AUTHORIZATION_FAILED in codes, seen
        assert codes <= {
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.GROUP_AUTHORIZATION_FAILED,
        }, seen
    finally:
        c.close()


def test_the_admin_principal_can_do_what_the_pipeline_needs(secure: PipelineSettings) -> None:
    md = AdminClient(admin_config(secure.kafka)).list_topics(timeout=TIMEOUT_S)
    assert {spec.name for spec in secure.kafka.topics()} <= set(md.topics)
    assert len(md.brokers) == 3


# -- a third-party client ---------------------------------------------------------------


def _doc_block() -> str:
    text = (REPO / "docs" / "contracts.md").read_text()
    m = re.search(
        r"<!-- kcat-secure.*?-->\s*```sh\n(.*?)```\s*<!-- /kcat-secure -->", text, re.DOTALL
    )
    assert m, "docs/contracts.md lost its kcat-secure block"
    return m.group(1)


def _kcat_env(tmp_path: Path) -> dict[str, str]:
    try:
        return kcat_env(tmp_path)
    except KcatUnavailable as e:
        pytest.skip(str(e))


def test_kcat_with_tls_and_scram_publishes_as_the_docs_say(
    secure: PipelineSettings, tmp_path: Path
) -> None:
    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed")
    image = REPO / "producers"
    photo = next(iter(sorted((image).rglob("*.jpg"))), None)
    if photo is None:
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(64) + b"\xff\xd9")
    key = f"kcat-secure-{uuid.uuid4().hex}"
    before = _end_offsets(secure, topics.RAW)
    env = {
        **os.environ,
        **_kcat_env(tmp_path),
        "KAFKA_USER": "producer",
        "KAFKA_PASSWORD_FILE": str(secure.security.resolved_secrets_dir() / "kafka" / "producer"),
        "CA_FILE": str(secure.security.resolved_ca_file()),
        "KCAT_CONF": str(tmp_path / "kcat.conf"),
        "BOOTSTRAP": secure.kafka.bootstrap_servers,
        "ID": key,
        "FILE": str(photo),
    }
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _doc_block()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "kcat.conf").stat().st_mode & 0o077 == 0, "kcat.conf is not private"
    assert _read_key(secure, topics.RAW, before, key) == photo.read_bytes()


def _end_offsets(s: PipelineSettings, topic: str) -> dict[int, int]:
    c = Consumer(consumer_config(s.kafka, f"k-sec-probe-{uuid.uuid4().hex[:8]}"))
    try:
        parts = c.list_topics(topic, timeout=TIMEOUT_S).topics[topic].partitions
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT_S)[1]
            for p in parts
        }
    finally:
        c.close()


def _read_key(s: PipelineSettings, topic: str, start: dict[int, int], key: str) -> bytes:
    c = Consumer(
        consumer_config(
            s.kafka, f"k-sec-read-{uuid.uuid4().hex[:8]}", {"enable.auto.commit": False}
        )
    )
    try:
        c.assign([TopicPartition(topic, p, o) for p, o in start.items()])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is not None and m.error() is None and m.key() == key.encode():
                value = m.value()
                assert value is not None
                return bytes(value)
        pytest.fail(f"the record kcat published ({key}) never arrived")
    finally:
        c.close()


# -- no secret in any log ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_secret_appears_in_the_logs_of_a_run(
    secure: PipelineSettings, cluster_backend: Any, tmp_path: Path
) -> None:
    """A producer and a stream worker run with debug logs against the secure cluster;
    neither their output nor the Kafka nodes' logs contain any Kafka secret."""
    sec = secure.security
    env = {
        **os.environ,
        "PIPELINE_SECURITY__MODE": "secure",
        "PIPELINE_SECURITY__CERTS_DIR": str(sec.resolved_certs_dir()),
        "PIPELINE_SECURITY__SECRETS_DIR": str(sec.resolved_secrets_dir()),
        "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": secure.kafka.bootstrap_servers,
        "PIPELINE_LOG_LEVEL": "DEBUG",
        "PIPELINE_STREAM__WORKER__WEB_PORT": str(_free_port()),
        "PIPELINE_STREAM__WORKER__DATA_DIR": str(tmp_path / "faust"),
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    prod = subprocess.run(
        [sys.executable, "-m", "producers", "samples"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    (logs / "producer.log").write_text(prod.stdout + prod.stderr)
    assert prod.returncode == 0, prod.stderr[-2000:]
    worker_log = logs / "worker.log"
    with open(worker_log, "w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "stream_app", "worker"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while "Authenticated as stream" not in worker_log.read_text():
            assert worker.poll() is None, worker_log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the worker never logged in"
            time.sleep(0.5)
        ready = re.compile(r"Worker ready|\[\^Worker\]: Ready")
        while not ready.search(worker_log.read_text()):
            assert worker.poll() is None, worker_log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the worker never became ready"
            time.sleep(0.5)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
    files = [logs / "producer.log", worker_log]
    run_dir = getattr(getattr(cluster_backend, "cluster", None), "run_dir", None)
    if run_dir is not None:
        files += sorted(Path(run_dir).glob("kafka-*/logs/*"))
    secrets = {p: read_secret(sec.resolved_secrets_dir(), "kafka", p) for p in KAFKA_PRINCIPALS}
    leaks = [
        f"{f}: the {name} password"
        for f in files
        if f.is_file()
        for name, value in secrets.items()
        if value in f.read_text(errors="replace")
    ]
    assert not leaks, "\n".join(leaks)
    assert len(files) >= 2
