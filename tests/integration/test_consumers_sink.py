"""The Cassandra sink against the real 3-node clusters (RF 3, LOCAL_QUORUM).

Each module run gets its own topics (a unique prefix on the registry names) and its own
keyspace (schemas.cql DDL via infra.provision), and each sink run its own group, so
these tests never see other tests' data. Predictions are produced here with
schemas.codec; the stream app is not needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster_backends import security_env

from consumers import queries
from consumers.settings import SinkSection, SinkSettings
from consumers.sink import Sink
from schemas import codec, dead_letter, topics

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STAGE_DLQS = [s.dlq for s in topics.STAGES]
WAIT_S = 180.0


def wait_for(pred: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.2) -> Any:
    """Poll `pred` until truthy or the deadline; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Env:
    base: Any  # PipelineSettings from the fixture
    prefix: str
    keyspace: str
    session: Any
    cluster: Any
    backend: Any  # cluster_backends.Backend

    def topic(self, name: str) -> str:
        return self.prefix + name

    def settings(self, group: str, **sink: Any) -> SinkSettings:
        fields: dict[str, Any] = {
            "group_id": group,
            "predictions_topic": self.topic(topics.PREDICTIONS),
            "dlq_topics": [self.topic(t) for t in STAGE_DLQS],
            "dead_letter_topic": self.topic(topics.SINK_DLQ),
            "health_interval_s": 2.0,
        }
        section = SinkSection(**(fields | sink))
        return SinkSettings(
            kafka=self.base.kafka,
            cassandra=self.base.cassandra.model_copy(update={"keyspace": self.keyspace}),
            sink=section,
        )

    def env_vars(self, group: str, **extra: str) -> dict[str, str]:
        """Env of a `python -m consumers sink` process: it logs in as the sink principal,
        so on a secure cluster its group (and this module's topics) are granted first."""
        self.backend.grant_pipeline(self.prefix, sink_group=group)
        c = self.base.cassandra
        env = dict(os.environ)
        env.update(security_env(self.base.security))  # the clusters' mode, not the default
        env.update(
            {
                "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": self.base.kafka.bootstrap_servers,
                # JSON: infra.settings declares contact_points without NoDecode, so a
                # comma-separated value fails in the env source before its validator runs.
                "PIPELINE_CASSANDRA__CONTACT_POINTS": json.dumps(list(c.contact_points)),
                "PIPELINE_CASSANDRA__PORT": str(c.port),
                "PIPELINE_CASSANDRA__LOCAL_DATACENTER": c.local_datacenter,
                "PIPELINE_CASSANDRA__KEYSPACE": self.keyspace,
                "PIPELINE_SINK__GROUP_ID": group,
                "PIPELINE_SINK__PREDICTIONS_TOPIC": self.topic(topics.PREDICTIONS),
                "PIPELINE_SINK__DLQ_TOPICS": ",".join(self.topic(t) for t in STAGE_DLQS),
                "PIPELINE_SINK__DEAD_LETTER_TOPIC": self.topic(topics.SINK_DLQ),
                "PIPELINE_SINK__HEALTH_INTERVAL_S": "2",
            }
        )
        env.update(extra)
        return env


@pytest.fixture(scope="module")
def env(kafka_cluster: Any, cassandra_cluster: Any, cluster_backend: Any) -> Iterator[Env]:
    from infra.cassandra_session import connect
    from infra.provision import admin_client, provision_keyspace, provision_topics

    # What the function-scoped `pipeline_settings` fixture returns, for the whole module.
    pipeline_settings = cluster_backend.settings()
    tag = uuid.uuid4().hex[:10]
    prefix, keyspace = f"t{tag}.", f"consumers_{tag}"
    wanted = {topics.PREDICTIONS, topics.SINK_DLQ, *STAGE_DLQS}
    specs = [
        s for s in topics.topic_registry(pipeline_settings.kafka.partitions) if s.name in wanted
    ]
    provision_topics(pipeline_settings, specs, prefix=prefix)
    provision_keyspace(pipeline_settings, keyspace)
    cluster, session = connect(pipeline_settings.cassandra)
    try:
        yield Env(pipeline_settings, prefix, keyspace, session, cluster, cluster_backend)
    finally:
        try:
            session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
            admin = admin_client(pipeline_settings)
            for fut in admin.delete_topics([prefix + s.name for s in specs]).values():
                fut.result()
        finally:
            cluster.shutdown()


# -- producing ---------------------------------------------------------------------------
def prediction(
    image_id: str,
    processed_at_ms: int,
    label: str = "tabby",
    score: float = 0.75,
    class_index: int = 281,
) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "source": "test",
        "content_type": "image/jpeg",
        "produced_at_ms": processed_at_ms - 500,
        "raw_topic": topics.RAW,
        "raw_partition": 0,
        "raw_offset": 0,
        "model_name": "efficientnet_lite0",
        "model_version": "1",
        "top_k": [
            {"class_index": class_index, "label": label, "score": score},
            {"class_index": 1, "label": "goldfish", "score": 0.125},
        ],
        "processed_at_ms": processed_at_ms,
        "trace": {"decode": processed_at_ms - 300},
    }


class Publisher:
    def __init__(self, env: Env) -> None:
        from confluent_kafka import Producer

        from infra.kafka_clients import producer_config

        self.env = env
        self.p = Producer(producer_config(env.base.kafka))
        self.errors: list[Any] = []

    def _cb(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(err)

    def send(self, topic: str, key: bytes | None, value: bytes, headers: list[Any]) -> None:
        while True:
            try:
                self.p.produce(
                    self.env.topic(topic),
                    key=key,
                    value=value,
                    headers=headers,
                    on_delivery=self._cb,
                )
                break
            except BufferError:
                self.p.poll(0.1)
        self.p.poll(0)

    def prediction(self, rec: dict[str, Any]) -> None:
        value, headers = codec.encode(codec.PREDICTION, rec)
        self.send(topics.PREDICTIONS, rec["image_id"].encode(), value, headers)

    def dead_letter(
        self, image_id: str, stage_dlq: str, reason: str, failed_at_ms: int | None = None
    ) -> None:
        stage = next(s.name for s in topics.STAGES if s.dlq == stage_dlq)
        value, headers = dead_letter.dead_letter(
            image_id=image_id,
            stage=stage,
            reason=reason,
            error=ValueError(reason),
            origin_topic=topics.RAW,
            origin_partition=0,
            origin_offset=0,
            payload=b"raw",
            source="test",
        )
        if failed_at_ms is not None:  # a chosen failure time (the encoder stamps now)
            rec = dead_letter.read_dead_letter(value, headers) | {"failed_at_ms": failed_at_ms}
            value, _ = codec.encode(codec.DEAD_LETTER, rec)
        self.send(stage_dlq, image_id.encode(), value, headers)

    def flush(self) -> None:
        assert self.p.flush(60) == 0, "records left unflushed"
        assert not self.errors, self.errors


def ids(tag: str, n: int) -> list[str]:
    return [f"{tag}-{i:05d}" for i in range(n)]


def publish_predictions(env: Env, image_ids: list[str], t0: int) -> None:
    pub = Publisher(env)
    for i, image_id in enumerate(image_ids):
        pub.prediction(prediction(image_id, t0 + i, label=f"label{i % 7}"))
    pub.flush()


# -- running the sink --------------------------------------------------------------------
class SinkThread:
    def __init__(self, settings: SinkSettings) -> None:
        self.sink = Sink(settings)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.sink.run(self.stop)
        except BaseException as exc:  # noqa: BLE001 - surfaced by join()
            self.error = exc

    def __enter__(self) -> SinkThread:
        self.thread.start()
        return self

    def done(self) -> int:
        c = self.sink.counters
        return c.predictions + c.rejections + c.dead_lettered

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(90)
        assert not self.thread.is_alive(), "sink did not stop within 90s"
        if self.error is not None and exc[0] is None:
            raise self.error


def group_lag(env: Env, group: str) -> int:
    from infra.groups import group_lag as lag

    try:
        sink_topics = [env.topic(t) for t in (topics.PREDICTIONS, *STAGE_DLQS)]
        return lag(env.base.kafka, group, sink_topics)["total"]
    except Exception:  # noqa: BLE001 - group not known yet
        return -1


def stored(env: Env, image_ids: list[str]) -> dict[str, dict[str, Any]]:
    return queries.fetch_predictions(env.session, image_ids, keyspace=env.keyspace)


def read_topic(env: Env, topic: str, expect: int) -> list[Any]:
    from confluent_kafka import Consumer

    from infra.kafka_clients import consumer_config

    c = Consumer(
        consumer_config(
            env.base.kafka, f"reader-{uuid.uuid4().hex[:8]}", {"enable.auto.commit": False}
        )
    )
    c.subscribe([env.topic(topic)])
    got: list[Any] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < expect and time.monotonic() < deadline:
            got += [m for m in c.consume(100, 0.5) if m.error() is None]
        # Anything beyond `expect` would be a bug too: read a little longer.
        got += [m for m in c.consume(100, 2.0) if m.error() is None]
    finally:
        c.close()
    return got


# -- tests ---------------------------------------------------------------------------------
def test_every_record_lands_once_and_replay_changes_nothing(env: Env) -> None:
    tag = f"a{uuid.uuid4().hex[:6]}"
    image_ids = ids(tag, 400)
    t0 = int(time.time() * 1000)
    pub = Publisher(env)
    for i, image_id in enumerate(image_ids):
        pub.prediction(prediction(image_id, t0 + i, label=f"label{i % 7}"))
    # The same id, a newer record first and an older one after it (same key -> same
    # partition, so the older is consumed later): the newer must stay.
    pub.prediction(prediction(f"{tag}-flip", t0 + 10_000, label="newer", score=0.9))
    pub.prediction(prediction(f"{tag}-flip", t0 + 5_000, label="older", score=0.1))
    rejected = [f"{tag}-rej{i}" for i in range(6)]
    for i, image_id in enumerate(rejected):
        pub.dead_letter(image_id, STAGE_DLQS[i % 3], reason=f"reason{i % 2}")
    # Undecodable predictions: a rejection row + the sink DLQ, under the key, the hash of a
    # key that is no valid id, or the record's origin when it has no key.
    _, pheaders = codec.encode(codec.PREDICTION, prediction("x", t0))
    pub.send(topics.PREDICTIONS, f"{tag}-garbled".encode(), b"\x02garbage", pheaders)
    pub.send(topics.PREDICTIONS, None, b"\x02garbage", pheaders)
    bad_key = f"{tag}\xff bad key".encode("latin-1")
    pub.send(topics.PREDICTIONS, bad_key, b"\x02garbage", pheaders)
    # One status per image, whatever the order of arrival (two topics): the newer wins,
    # a tie goes to the prediction.
    later, earlier = t0 + 60_000, t0 - 60_000
    pub.dead_letter(f"{tag}-p-wins", STAGE_DLQS[1], "transient", failed_at_ms=t0)
    pub.prediction(prediction(f"{tag}-p-wins", later))
    pub.prediction(prediction(f"{tag}-r-wins", earlier))
    pub.dead_letter(f"{tag}-r-wins", STAGE_DLQS[0], "late-failure", failed_at_ms=t0)
    pub.dead_letter(f"{tag}-tie", STAGE_DLQS[2], "tied", failed_at_ms=t0)
    pub.prediction(prediction(f"{tag}-tie", t0))
    pub.flush()
    total = len(image_ids) + 2 + len(rejected) + 3 + 6

    group = f"g-{tag}"
    with SinkThread(env.settings(group, concurrency=32)) as run:
        wait_for(
            lambda: run.done() >= total and run.sink.open_records == 0,
            WAIT_S,
            "the sink to settle every record",
        )
        wait_for(lambda: group_lag(env, group) == 0, 30, "committed offsets at the end")
    assert run.sink.counters.records == total

    all_ids = [*image_ids, f"{tag}-flip", f"{tag}-p-wins", f"{tag}-tie"]
    first = stored(env, all_ids)
    assert sorted(first) == sorted(all_ids)
    assert first[f"{tag}-flip"]["label"] == "newer" and first[f"{tag}-flip"]["score"] == 0.9
    assert first[image_ids[3]]["top_k"] == [[281, "label3", 0.75], [1, "goldfish", 0.125]]
    assert first[image_ids[3]]["processed_at"] == t0 + 3
    rej = queries.fetch_rejections(
        env.session, [*rejected, f"{tag}-garbled"], keyspace=env.keyspace
    )
    assert sorted(rej) == sorted([*rejected, f"{tag}-garbled"])
    assert rej[rejected[1]]["reason"] == "reason1" and rej[rejected[1]]["stage"] == "infer"
    assert rej[f"{tag}-garbled"]["stage"] == "sink"
    # The one-status rule held in Cassandra: exactly one of the two rows per id.
    assert f"{tag}-r-wins" not in first
    statuses = queries.fetch_rejections(
        env.session, [f"{tag}-p-wins", f"{tag}-r-wins", f"{tag}-tie"], keyspace=env.keyspace
    )
    assert sorted(statuses) == [f"{tag}-r-wins"]
    # The refused records are in the sink's DLQ, with their origin, and each has one row.
    dlq = [
        dead_letter.read_dead_letter(m.value(), m.headers())
        for m in read_topic(env, topics.SINK_DLQ, 3)
    ]
    dlq = [d for d in dlq if d["origin_topic"] == env.topic(topics.PREDICTIONS)]
    assert len(dlq) == 3
    safe = {d["image_id"] for d in dlq} - {f"{tag}-garbled"}
    no_key = next(i for i in safe if i.startswith("no-key:"))
    hashed = next(i for i in safe if i.startswith("key-sha256:"))
    assert no_key.startswith(f"no-key:{env.topic(topics.PREDICTIONS)}/")
    rows = {
        i: env.session.execute(
            f"SELECT image_id, stage, raw_key FROM {env.keyspace}.rejections WHERE image_id = %s",
            (i,),
        ).one()
        for i in safe
    }
    assert all(rows.values()) and rows[no_key].raw_key is None
    assert rows[hashed].raw_key == repr(bad_key)[2:-1] and rows[hashed].stage == "sink"
    # The by-label index: the stale "older" entry is filtered by verification.
    assert [
        r["image_id"] for r in queries.by_label(env.session, "older", keyspace=env.keyspace)
    ] == []
    newer = queries.by_label(env.session, "newer", keyspace=env.keyspace)
    assert [r["image_id"] for r in newer] == [f"{tag}-flip"]

    # Replay everything from offset 0 with a new group: same rows, no value regressed.
    replay = f"g-{tag}-replay"
    with SinkThread(env.settings(replay, concurrency=64)) as run2:
        wait_for(
            lambda: run2.done() >= total and run2.sink.open_records == 0,
            WAIT_S,
            "the replay to settle every record",
        )
    again = stored(env, all_ids)
    strip = ("stored_at",)
    assert {k: {c: v for c, v in r.items() if c not in strip} for k, r in again.items()} == {
        k: {c: v for c, v in r.items() if c not in strip} for k, r in first.items()
    }
    ks = env.keyspace
    mine = {
        i for i in queries.all_ids(env.session, "predictions", keyspace=ks) if i.startswith(tag)
    }
    assert mine == set(all_ids)


def test_sink_keeps_writing_at_quorum_with_a_cassandra_node_killed(
    env: Env, cassandra_cluster: Any
) -> None:
    tag = f"b{uuid.uuid4().hex[:6]}"
    image_ids = ids(tag, 3000)
    t0 = int(time.time() * 1000)
    victim = "cassandra-3"
    group = f"g-{tag}"
    publish_predictions(env, image_ids[:1500], t0)
    try:
        with SinkThread(env.settings(group, concurrency=64)) as run:
            wait_for(lambda: run.sink.rows_written >= 600, WAIT_S, "the sink to be mid-stream")
            cassandra_cluster.kill_node(victim)
            publish_predictions(env, image_ids[1500:], t0 + 1500)
            wait_for(
                lambda: run.done() >= len(image_ids) and run.sink.open_records == 0,
                WAIT_S,
                "every record written with a node down",
            )
            wait_for(lambda: group_lag(env, group) == 0, 30, "committed offsets")
        got = stored(env, image_ids)
        assert len(got) == len(image_ids), f"missing {sorted(set(image_ids) - set(got))[:5]}"

        # Read availability: with the node still down, the query CLI returns everything.
        id_file = Path(f"/tmp/{tag}.ids")
        id_file.write_text("\n".join(image_ids))
        out = subprocess.run(
            [sys.executable, "-m", "consumers", "query", "--json", "--ids-from", str(id_file)],
            cwd=REPO,
            env=env.env_vars(group),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        result = json.loads(out.stdout)
        assert result["missing"] == [] and len(result["predictions"]) == len(image_ids)
        assert result["predictions"][image_ids[10]]["label"] == "label3"
        stats = subprocess.run(
            [sys.executable, "-m", "consumers", "query", "--json", "--stats"],
            cwd=REPO,
            env=env.env_vars(group),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert stats.returncode == 0, stats.stderr[-2000:]
        assert json.loads(stats.stdout)["predictions"] >= len(image_ids)
    finally:
        cassandra_cluster.start_node(victim)


def _sink_proc(env: Env, group: str, log_path: Path, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "consumers", "sink", "--group", group],
        cwd=REPO,
        env=env.env_vars(group, **extra),
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
    )


def test_sigkill_mid_batch_then_restart_loses_nothing(env: Env, tmp_path: Path) -> None:
    tag = f"c{uuid.uuid4().hex[:6]}"
    image_ids = ids(tag, 4000)
    group = f"g-{tag}"
    publish_predictions(env, image_ids, int(time.time() * 1000))
    first = _sink_proc(env, group, tmp_path / "sink1.log", PIPELINE_SINK__CONCURRENCY="16")
    try:
        # Mid-batch: some offsets committed, many records still to go.
        wait_for(
            lambda: 0 < group_lag(env, group) < len(image_ids) - 200,
            WAIT_S,
            "the first sink to commit part of the topic",
            every_s=0.1,
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    lag_at_kill = group_lag(env, group)
    assert lag_at_kill > 0, "the sink finished before it was killed: not a mid-batch kill"

    second = _sink_proc(env, group, tmp_path / "sink2.log")
    try:
        wait_for(lambda: group_lag(env, group) == 0, WAIT_S, "the restarted sink to catch up")
        got = stored(env, image_ids)
        assert len(got) == len(image_ids), f"lost {sorted(set(image_ids) - set(got))[:5]}"
    finally:
        second.send_signal(signal.SIGTERM)
        rc = second.wait(120)
    log = (tmp_path / "sink2.log").read_text()
    assert rc == 0, log[-3000:]
    assert "committed" in log and "sink stopped" in log


def test_sink_refuses_consistency_that_cannot_overlap(env: Env, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "consumers", "sink"],
        cwd=REPO,
        env=env.env_vars(
            f"g-refuse-{uuid.uuid4().hex[:6]}", PIPELINE_CASSANDRA__WRITE_CONSISTENCY="ONE"
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "refuses to start" in out.stderr and "<= RF 3" in out.stderr, out.stderr[-2000:]


def test_second_sink_joining_mid_stream_rebalances_without_loss(env: Env) -> None:
    tag = f"d{uuid.uuid4().hex[:6]}"
    image_ids = ids(tag, 4000)
    rejected = [f"{tag}-rej{i:03d}" for i in range(90)]
    group = f"g-{tag}"
    t0 = int(time.time() * 1000)
    publish_predictions(env, image_ids[:2000], t0)
    with SinkThread(env.settings(group, concurrency=16)) as a:
        wait_for(lambda: a.sink.rows_written >= 400, WAIT_S, "the first sink to be mid-stream")
        with SinkThread(env.settings(group, concurrency=16)) as b:
            # Cooperative rebalance: a drains and commits what it gives up, b takes over
            # (the sticky assignor decides which topics' partitions move).
            wait_for(
                lambda: b.sink.assigned and len(a.sink.assigned) < 4 * 6,
                WAIT_S,
                "the second sink to take over partitions",
            )
            assert not (a.sink.assigned & b.sink.assigned), "a partition held by both members"
            # More work on every topic, so both members get some of it.
            publish_predictions(env, image_ids[2000:], t0 + 2000)
            pub = Publisher(env)
            for i, image_id in enumerate(rejected):
                pub.dead_letter(image_id, STAGE_DLQS[i % 3], reason="late")
            pub.flush()
            wait_for(
                lambda: (
                    a.done() + b.done() >= len(image_ids) + len(rejected)
                    and a.sink.open_records == 0
                    and b.sink.open_records == 0
                ),
                WAIT_S,
                "both sinks to settle every record",
            )
            wait_for(lambda: group_lag(env, group) == 0, WAIT_S, "the group to commit")
    assert a.sink.counters.records > 0 and b.sink.counters.records > 0
    got = stored(env, image_ids)
    assert len(got) == len(image_ids), f"lost {sorted(set(image_ids) - set(got))[:5]}"
    rej = queries.fetch_rejections(env.session, rejected, keyspace=env.keyspace)
    assert len(rej) == len(rejected)


def test_provisioning_adds_raw_key_to_an_older_rejections_table(env: Env) -> None:
    """A keyspace provisioned before `raw_key` existed gets the column (the sink refuses
    to start without it)."""
    from consumers.sink import check_tables
    from infra.provision import provision_keyspace
    from schemas import cql

    keyspace = f"older_{uuid.uuid4().hex[:10]}"
    old = [
        s.replace(",\n  raw_key           text", "") if ".rejections" in s else s
        for s in cql.table_ddl(keyspace)
    ]
    assert not any("raw_key" in s for s in old)
    try:
        provision_keyspace(env.base, keyspace, table_ddl=[])  # the keyspace alone
        for stmt in old:  # the tables as an older release created them
            env.session.execute(stmt, timeout=60)
        assert env.cluster.control_connection.wait_for_schema_agreement(wait_time=60)
        with pytest.raises(Exception, match="raw_key"):
            check_tables(env.session, keyspace)
        provision_keyspace(env.base, keyspace)
        check_tables(env.session, keyspace)  # the sink would start now
        provision_keyspace(env.base, keyspace)  # and again: nothing left to add
    finally:
        env.session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
