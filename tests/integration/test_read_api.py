"""The HTTPS read API (`python -m consumers api`) against the real clusters.

One API process per module, on its own keyspace (schemas.cql DDL via infra.provision)
filled here with CQL: 12 predictions labelled 'tabby cat', 3 'espresso', one stale
index row, 5 rejections. A raw image is produced to a private topic so one prediction
has a thumbnail in retention. The API serves HTTPS with the generated local CA and a
fixed bearer token; the client trusts only that CA. The last test kills a Cassandra
node, reads everything again, and starts the node before it ends.
"""

from __future__ import annotations

import io
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster_backends import security_env

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
CATS = 12


@dataclass
class Api:
    url: str
    token: str
    ctx: ssl.SSLContext
    keyspace: str
    cats: list[str]
    espresso: list[str]
    rejected: dict[str, str]  # id -> reason
    thumb_id: str
    gone_id: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(
        self, path: str, token: str | None = "default", method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url.rstrip("/") + path, method=method)
        tok = self.token if token == "default" else token
        if tok is not None:
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, path: str, status: int = 200, **kw: Any) -> Any:
        code, headers, body = self.get(path, **kw)
        assert code == status, f"{path}: {code} {body[:300]!r}"
        assert headers.get("Content-Type", "").startswith("application/json"), headers
        return json.loads(body)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(out, "JPEG")
    return out.getvalue()


def _fill(session: Any, ks: str, tag: str, raw_topic: str, raw_offset: int) -> dict[str, Any]:
    now = int(time.time() * 1000)
    ins_p = session.prepare(
        f"INSERT INTO {ks}.predictions (image_id, label, class_index, score, top_k, model_name, "
        "model_version, source, content_type, raw_topic, raw_partition, raw_offset, produced_at, "
        "processed_at, stored_at, stage_ms) VALUES (?, ?, ?, ?, ?, 'm', '1', ?, 'image/jpeg', ?, "
        "0, ?, ?, ?, ?, ?)"
    )
    ins_l = session.prepare(
        f"INSERT INTO {ks}.predictions_by_label (label, image_id, score, model_name, "
        "model_version, source, produced_at) VALUES (?, ?, ?, 'm', '1', ?, ?)"
    )
    ins_r = session.prepare(
        f"INSERT INTO {ks}.rejections (image_id, stage, reason, error_class, message, retriable, "
        "source, origin_topic, origin_partition, origin_offset, produced_at, rejected_at, "
        "stored_at) VALUES (?, 'decode', ?, 'E', 'bad bytes', false, 'test', 'images.raw', 0, "
        "?, ?, ?, ?)"
    )

    def pred(image_id: str, label: str, i: int, offset: int) -> None:
        top = [(281, label, 0.9), (282, "other", 0.05)]
        session.execute(
            ins_p,
            (
                image_id,
                label,
                281,
                0.9,
                top,
                f"src/{i}",
                raw_topic,
                offset,
                now,
                now + 5,
                now + 9,
                {"decode": 2, "infer": 30},
            ),
        )
        session.execute(ins_l, (label, image_id, 0.9, f"src/{i}", now))

    cats = sorted(f"{tag}-cat-{i:02d}" for i in range(CATS))
    for i, image_id in enumerate(cats):
        pred(image_id, "tabby cat", i, 10_000_000 + i)
    espresso = [f"{tag}-esp-{i}" for i in range(3)]
    for i, image_id in enumerate(espresso):
        pred(image_id, "espresso", i, 10_000_100 + i)
    thumb_id = f"{tag}-thumb"
    pred(thumb_id, "espresso", 99, raw_offset)
    espresso.append(thumb_id)
    # A stale index row: the image's current label is 'espresso', not 'tabby cat'.
    session.execute(ins_l, ("tabby cat", espresso[0], 0.5, "stale", now))
    rejected = {f"{tag}-rej-{i}": ("undecodable" if i < 3 else "too-large") for i in range(5)}
    for i, (image_id, reason) in enumerate(rejected.items()):
        session.execute(ins_r, (image_id, reason, i, now, now + i, now + i))
    return {
        "cats": cats,
        "espresso": espresso,
        "rejected": rejected,
        "thumb_id": thumb_id,
        "gone_id": espresso[1],
    }


@pytest.fixture(scope="module")
def api(
    kafka_cluster: Any,
    cassandra_cluster: Any,
    cluster_backend: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Api]:
    from confluent_kafka import Producer

    from consumers.api.tls import client_context
    from infra.cassandra_session import connect
    from infra.kafka_clients import producer_config
    from infra.provision import provision_keyspace

    settings = cluster_backend.settings()
    tag = uuid.uuid4().hex[:8]
    ks = f"api_{tag}"
    raw_topic = f"t{tag}.images.raw"
    kafka_cluster.create_topic(raw_topic, partitions=1)
    producer = Producer(producer_config(settings.kafka))
    delivered: list[Any] = []
    producer.produce(
        raw_topic,
        key=f"{tag}-thumb".encode(),
        value=_jpeg(),
        on_delivery=lambda err, msg: delivered.append((err, msg)),
    )
    producer.flush(30)
    assert delivered and delivered[0][0] is None, delivered
    offset = delivered[0][1].offset()

    provision_keyspace(settings, ks)
    cluster, session = connect(settings.cassandra)
    rows = _fill(session, ks, tag, raw_topic, offset)
    run_dir = tmp_path_factory.mktemp("api-run")
    token = uuid.uuid4().hex + uuid.uuid4().hex
    port = _free_port()
    env = {
        **os.environ,
        "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "PIPELINE_CASSANDRA__CONTACT_POINTS": ",".join(settings.cassandra.contact_points),
        "PIPELINE_CASSANDRA__KEYSPACE": ks,
        "PIPELINE_RUN_DIR": str(run_dir),
        **security_env(settings.security),  # the clusters' CA and secrets, not run_dir's
        "PIPELINE_API__PORT": str(port),
        "PIPELINE_API__TOKEN": token,
        "PIPELINE_API__SCAN_CACHE_S": "0",
    }
    log = run_dir / "api.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "consumers", "api"],
            cwd=REPO,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        endpoint = run_dir / "api" / "endpoint.json"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not endpoint.exists():
            assert proc.poll() is None, f"api exited {proc.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"api not serving: {log.read_text()[-2000:]}"
            time.sleep(0.1)
        info = json.loads(endpoint.read_text())
        ca = Path(info["ca_cert"])
        assert (ca.stat().st_mode & 0o777) == 0o600
        yield Api(
            url=info["url"],
            token=token,
            ctx=client_context(ca),
            keyspace=ks,
            proc=proc,
            log=log,
            **rows,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        try:
            session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=60)
            kafka_cluster.delete_topics([raw_topic])
        finally:
            cluster.shutdown()


# -- auth, TLS, public routes ------------------------------------------------------------
def test_no_token_and_wrong_token_are_401_with_json(api: Api) -> None:
    body = api.json("/v1/stats", 401, token=None)
    assert body["error"] == "unauthorized"
    assert api.json("/v1/stats", 401, token="x" * 64)["error"] == "unauthorized"
    assert (
        api.json(f"/v1/images/{api.cats[0]}", 401, token=api.token[:-1])["error"] == "unauthorized"
    )
    code, headers, _ = api.get("/v1/stats", token=None)
    assert code == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")


def test_healthz_openapi_and_page_need_no_token(api: Api) -> None:
    assert api.json("/healthz", token=None)["status"] == "ok"
    spec = api.json("/openapi.json", token=None)
    assert {
        "/v1/images/{image_id}",
        "/v1/labels/{label}",
        "/v1/rejections",
        "/v1/stats",
        "/healthz",
    } <= set(spec["paths"])
    code, headers, body = api.get("/", token=None)
    assert code == 200 and b"/static/page.js" in body
    assert "script-src 'self'" in headers.get("Content-Security-Policy", "")


def test_https_only_and_only_our_ca_is_trusted(api: Api) -> None:
    assert api.url.startswith("https://127.0.0.1:")
    host, port = urllib.parse.urlsplit(api.url).hostname, urllib.parse.urlsplit(api.url).port
    assert host and port
    with pytest.raises(urllib.error.URLError):  # the system CAs do not know our CA
        urllib.request.urlopen(
            api.url + "healthz", context=ssl.create_default_context(), timeout=10
        )
    with socket.create_connection((host, port), timeout=10) as s:  # plain HTTP gets no answer
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        try:
            reply = s.recv(200)
        except (ConnectionResetError, TimeoutError):
            reply = b""
        assert not reply.startswith(b"HTTP/1.1 200")


# -- images ------------------------------------------------------------------------------
def test_image_prediction_rejection_and_missing(api: Api) -> None:
    p = api.json(f"/v1/images/{api.cats[3]}")
    assert p["status"] == "prediction" and p["label"] == "tabby cat"
    assert p["stage_ms"] == {"decode": 2, "infer": 30} and p["processed_at"] > p["produced_at"]
    assert p["top_k"][0][1] == "tabby cat"
    rid, reason = next(iter(api.rejected.items()))
    r = api.json(f"/v1/images/{rid}")
    assert r["status"] == "rejected" and r["reason"] == reason and r["stage"] == "decode"
    assert api.json("/v1/images/never-stored-id", 404)["error"] == "not_found"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/images/bad%20id",
        "/v1/images/" + "a" * 201,
        "/v1/images/%00",
        "/v1/images/%E2%98%83",
        "/v1/images/x?unknown=1",
    ],
)
def test_malformed_image_ids_are_400(api: Api, path: str) -> None:
    body = api.json(path, 400)
    assert body["error"] in ("bad_image_id", "unknown_parameter") and body["message"]


def test_thumbnail_from_raw_topic_or_placeholder(api: Api) -> None:
    code, headers, body = api.get(f"/v1/images/{api.thumb_id}/thumbnail")
    assert code == 200 and headers["Content-Type"] == "image/jpeg"
    from PIL import Image

    with Image.open(io.BytesIO(body)) as im:
        assert im.format == "JPEG" and max(im.size) <= 160
    # Its raw offset is past the end of the topic: out of retention.
    assert api.json(f"/v1/images/{api.gone_id}/thumbnail", 404)["error"] == "not_in_retention"
    code, headers, body = api.get(f"/v1/images/{api.gone_id}/thumbnail?placeholder=1")
    assert code == 200 and headers["Content-Type"].startswith("image/svg+xml")
    rid = next(iter(api.rejected))
    assert api.json(f"/v1/images/{rid}/thumbnail", 404)["error"] == "not_found"


# -- labels: paging and bad input --------------------------------------------------------
def _all_pages(api: Api, label: str, limit: int) -> tuple[list[str], int]:
    ids: list[str] = []
    page, pages = None, 0
    while True:
        q = f"?limit={limit}" + (f"&page={page}" if page else "")
        body = api.json(f"/v1/labels/{urllib.parse.quote(label)}{q}")
        assert len(body["items"]) <= limit and body["label"] == label
        ids += [r["image_id"] for r in body["items"]]
        pages += 1
        page = body["next_page"]
        if page is None:
            return ids, pages
        assert pages < 50, "paging does not end"


def test_label_pages_cover_every_image_once_in_order(api: Api) -> None:
    ids, pages = _all_pages(api, "tabby cat", 5)
    # The stale index row (an espresso) is read but verified away.
    assert ids == api.cats and pages >= 3
    assert _all_pages(api, "espresso", 100)[0] == sorted(api.espresso)
    first = api.json("/v1/labels/tabby%20cat")
    assert [r["image_id"] for r in first["items"]] == api.cats and first["next_page"] is None


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/v1/labels/no%20such%20label", 404, "unknown_label"),
        ("/v1/labels/tabby%20cat?limit=-1", 400, "bad_limit"),
        ("/v1/labels/tabby%20cat?limit=0", 400, "bad_limit"),
        ("/v1/labels/tabby%20cat?limit=100000", 400, "bad_limit"),
        ("/v1/labels/tabby%20cat?limit=ten", 400, "bad_limit"),
        ("/v1/labels/tabby%20cat?page=%%%", 400, "bad_page_token"),
        ("/v1/labels/tabby%20cat?page=bm90LWpzb24", 400, "bad_page_token"),
        ("/v1/labels/tabby%20cat?limit=1&limit=2", 400, "repeated_parameter"),
        ("/v1/labels/" + "x" * 300, 400, "bad_label"),
        ("/v1/labels/a%01b", 400, "bad_label"),
        ("/v1/stats?" + "q=" + "a" * 5000, 414, "uri_too_long"),
        ("/v1/nowhere", 404, "not_found"),
    ],
)
def test_bad_input_is_a_4xx_with_a_json_error(api: Api, path: str, status: int, error: str) -> None:
    body = api.json(path, status)
    assert body["error"] == error and "Traceback" not in json.dumps(body)


def test_a_page_token_of_another_label_is_refused(api: Api) -> None:
    token = api.json("/v1/labels/tabby%20cat?limit=2")["next_page"]
    assert token
    assert api.json(f"/v1/labels/espresso?page={token}", 400)["error"] == "bad_page_token"
    assert api.json(f"/v1/rejections?page={token}", 400)["error"] == "bad_page_token"


def test_writes_are_405(api: Api) -> None:
    code, _, body = api.get("/v1/stats", method="POST")
    assert code == 405 and json.loads(body)["error"] == "method_not_allowed"


# -- rejections and stats ----------------------------------------------------------------
def test_rejections_by_reason_paged(api: Api) -> None:
    body = api.json("/v1/rejections?reason=undecodable&limit=2")
    assert len(body["items"]) == 2 and body["next_page"]
    rest = api.json(f"/v1/rejections?reason=undecodable&limit=2&page={body['next_page']}")
    got = [r["image_id"] for r in body["items"] + rest["items"]]
    want = sorted(i for i, r in api.rejected.items() if r == "undecodable")
    assert sorted(got) == want and rest["next_page"] is None
    assert set(body["reasons"]) == {"undecodable", "too-large"}
    assert api.json("/v1/rejections?reason=nope", 404)["error"] == "unknown_reason"
    assert len(api.json("/v1/rejections")["items"]) == len(api.rejected)


def test_stats_counts(api: Api) -> None:
    st = api.json("/v1/stats")
    assert st["predictions"] == CATS + len(api.espresso)
    assert st["by_label"] == {"tabby cat": CATS, "espresso": len(api.espresso)}
    assert st["rejections"] == len(api.rejected)
    assert st["rejections_by_reason"] == {"undecodable": 3, "too-large": 2}


# -- availability ------------------------------------------------------------------------
def test_answers_everything_with_one_cassandra_node_down(api: Api, cassandra_cluster: Any) -> None:
    victim = cassandra_cluster.node_names()[-1]
    cassandra_cluster.kill_node(victim)
    try:
        for image_id in api.cats + api.espresso:
            assert api.json(f"/v1/images/{image_id}")["status"] == "prediction"
        for image_id in api.rejected:
            assert api.json(f"/v1/images/{image_id}")["status"] == "rejected"
        assert _all_pages(api, "tabby cat", 4)[0] == api.cats
        assert api.json("/v1/stats")["predictions"] == CATS + len(api.espresso)
        assert len(api.json("/v1/rejections")["items"]) == len(api.rejected)
        assert api.json("/healthz")["status"] == "ok"
    finally:
        cassandra_cluster.start_node(victim)
    assert api.proc.poll() is None, api.log.read_text()[-2000:]
    assert "Traceback" not in api.log.read_text()
