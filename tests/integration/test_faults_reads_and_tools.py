"""Reads and tools ride through faults (issue 17), on the real clusters.

- A read loop (point lookups by id, verified label pages, full `stats` scans) runs while
  a Cassandra node is SIGKILLed and restarted: no read may fail or answer wrong; p50/p99
  latency before, during and after are printed (run with -s to see them).
- The demo's wait helper (demo.accounting.wait_accounted) polls end offsets, committed
  offsets and both tables while a Kafka broker is SIGKILLed: it must finish with every
  image accounted for.

Each test restarts the node it killed before it ends.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_consumers_sink import SinkThread, env, ids, publish_predictions  # noqa: F401

from consumers import queries
from demo.accounting import percentile, wait_accounted
from infra import groups
from infra.cassandra_session import connect
from infra.provision import provision_keyspace
from schemas import topics

pytestmark = [pytest.mark.slow]

LABELS = ("tabby", "espresso", "rocket")
PER_LABEL = 100
REJECTED = 60
SHADOWED = 20  # ids with a prediction and a newer rejection: they count as rejections
PHASE_READS = 300
DOWN_AT_LEAST_S = 15.0  # longer than the coordinators' failure detection takes


def _seed(session: Any, ks: str) -> dict[str, Any]:
    """Rows with known answers; returns what each read must give."""
    ins_p = session.prepare(
        f"INSERT INTO {ks}.predictions (image_id, label, score, model_name, model_version,"
        " source, processed_at) VALUES (?, ?, ?, 'm', '1', 'test', ?) USING TIMESTAMP ?"
    )
    ins_l = session.prepare(
        f"INSERT INTO {ks}.predictions_by_label (label, image_id, score, model_name,"
        " model_version, source) VALUES (?, ?, ?, 'm', '1', 'test') USING TIMESTAMP ?"
    )
    ins_r = session.prepare(
        f"INSERT INTO {ks}.rejections (image_id, stage, reason, message, rejected_at)"
        " VALUES (?, 'decode', 'corrupt', 'bad bytes', ?) USING TIMESTAMP ?"
    )
    status: dict[str, tuple[str, str]] = {}
    ts = 1_700_000_000_000_000
    for li, label in enumerate(LABELS):
        for n in range(PER_LABEL):
            i = f"p-{label}-{n:03d}"
            session.execute(ins_p, (i, label, 0.5, 1000 + n, ts))
            session.execute(ins_l, (label, i, 0.5, ts))
            status[i] = ("prediction", label)
            if li == 0 and n < SHADOWED:  # a newer rejection replaced this prediction
                session.execute(ins_r, (i, 2000, ts + 10))
                status[i] = ("rejected", "corrupt")
    for n in range(REJECTED):
        session.execute(ins_r, (f"r-{n:03d}", 3000 + n, ts))
        status[f"r-{n:03d}"] = ("rejected", "corrupt")
    # Label pages are checked against `predictions` only: a shadowed id keeps its page
    # entry while its (older) prediction row exists.
    by_label = {lb: sorted(i for i in status if i.startswith(f"p-{lb}-")) for lb in LABELS}
    return {
        "status": status,
        "by_label": by_label,
        "predictions": sum(len(v) for v in by_label.values()) - SHADOWED,
        "rejections": REJECTED + SHADOWED,
    }


class ReadLoop:
    """Runs reads, times each, and checks each answer against the seeded truth."""

    def __init__(self, session: Any, ks: str, truth: dict[str, Any]) -> None:
        self.session, self.ks, self.truth = session, ks, truth
        self.ids = sorted(truth["status"])
        self.rng = random.Random(17)
        self.n = 0
        self.samples: list[tuple[str, str, float]] = []  # (phase, kind, ms)
        self.failures: list[str] = []

    def one(self, phase: str) -> None:
        self.n += 1
        kind = "stats" if self.n % 25 == 0 else "label" if self.n % 5 == 0 else "point"
        t = time.perf_counter()
        try:
            problem = getattr(self, f"_{kind}")()
        except Exception as exc:  # noqa: BLE001 - every failed read is counted and named
            problem = f"{type(exc).__name__}: {exc}"
        self.samples.append((phase, kind, (time.perf_counter() - t) * 1000))
        if problem:
            self.failures.append(f"{phase} {kind}: {problem}"[:300])

    def _point(self) -> str:
        asked = self.rng.sample(self.ids, 5)
        got = queries.lookup(self.session, asked, keyspace=self.ks)
        for i in asked:
            want, detail = self.truth["status"][i]
            row = got.predictions.get(i) if want == "prediction" else got.rejections.get(i)
            if row is None or (row.get("label") or row.get("reason")) != detail:
                return f"{i}: want {want} {detail}, got {got}"
        return ""

    def _label(self) -> str:
        label = self.rng.choice(LABELS)
        rows = queries.by_label(self.session, label, keyspace=self.ks, limit=25)
        want = self.truth["by_label"][label][:25]
        got = [r["image_id"] for r in rows]
        return "" if got == want else f"label {label}: {got[:3]}... != {want[:3]}..."

    def _stats(self) -> str:
        st = queries.stats(self.session, keyspace=self.ks)
        want = (self.truth["predictions"], self.truth["rejections"])
        got = (st["predictions"], st["rejections"])
        return "" if got == want and st["in_both_tables"] == SHADOWED else f"stats {got} != {want}"

    def run_until(self, phase: str, stop: Callable[[], bool]) -> None:
        while not stop():
            self.one(phase)

    def count(self, phase: str) -> int:
        return sum(1 for p, _, _ in self.samples if p == phase)

    def report(self) -> str:
        lines = [f"{'phase':<8}{'kind':<7}{'reads':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"]
        for phase in ("before", "during", "after"):
            for kind in ("all", "point", "label", "stats"):
                ms = [m for p, k, m in self.samples if p == phase and kind in ("all", k)]
                if ms:
                    lines.append(
                        f"{phase:<8}{kind:<7}{len(ms):>6}{percentile(ms, 50):>9.1f}"
                        f"{percentile(ms, 99):>9.1f}{max(ms):>9.1f}"
                    )
        lines.append(f"reads {len(self.samples)}, failed {len(self.failures)}")
        return "\n".join(lines)


@pytest.mark.cassandra
def test_reads_ride_through_a_killed_and_restarted_cassandra_node(
    cassandra_cluster: Any,
    pipeline_settings: Any,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ks = f"reads_{unique_name}"
    provision_keyspace(pipeline_settings, ks)
    cluster, session = connect(pipeline_settings.cassandra)
    # Small pages, so every stats scan is several requests and a retried page resumes.
    monkeypatch.setattr(queries, "PAGE_SIZE", 50)
    victim = "cassandra-2"
    restarted = threading.Event()
    killed = False
    try:
        loop = ReadLoop(session, ks, _seed(session, ks))
        loop.run_until("before", lambda: loop.count("before") >= PHASE_READS)

        cassandra_cluster.kill_node(victim)
        killed = True
        t_kill = time.monotonic()
        loop.run_until(
            "during",
            lambda: (
                loop.count("during") >= PHASE_READS and time.monotonic() - t_kill >= DOWN_AT_LEAST_S
            ),
        )
        start_error: list[BaseException] = []

        def restart() -> None:
            try:
                cassandra_cluster.start_node(victim)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                start_error.append(exc)
            finally:
                restarted.set()

        threading.Thread(target=restart, daemon=True).start()
        loop.run_until("during", restarted.is_set)
        assert not start_error, f"{victim} did not start again: {start_error[0]}"
        killed = False
        during_s = time.monotonic() - t_kill
        loop.run_until("after", lambda: loop.count("after") >= PHASE_READS)

        print(f"\n{victim} down/restarting for {during_s:.0f}s\n{loop.report()}")
        assert len(loop.samples) >= 1000
        assert loop.failures == [], f"{len(loop.failures)} failed reads: {loop.failures[:5]}"
    finally:
        if killed and not restarted.is_set():
            cassandra_cluster.start_node(victim)
        try:
            session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=60)
        finally:
            cluster.shutdown()


@pytest.mark.cluster
def test_the_demo_wait_rides_through_a_killed_broker(
    env: Any,  # noqa: F811 - the imported fixture
    kafka_cluster: Any,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="infra.kafka_retry")
    group = f"g-{unique_name}"
    pred_topic = env.topic(topics.PREDICTIONS)
    image_ids = ids(unique_name, 400)
    first, second = image_ids[:200], image_ids[200:]
    t0 = int(time.time() * 1000)
    before = groups.end_offsets(env.base.kafka, [pred_topic])
    publish_predictions(env, first, t0)
    victim = "kafka-2"
    killed_at: list[float] = []
    lags: list[int] = []

    def on_progress(counts: dict[str, int]) -> None:
        # The demo's display also shows the sink's lag: committed offsets via the
        # group coordinator, which may be the broker that just died.
        lags.append(groups.group_lag(env.base.kafka, group, [pred_topic])["total"])
        if not killed_at:
            kafka_cluster.kill_node(victim)
            killed_at.append(time.monotonic())
            publish_predictions(env, second, t0 + 10_000)  # records across the leader move

    try:
        with SinkThread(env.settings(group)):
            acc, counts = wait_accounted(
                env.session,
                env.keyspace,
                image_ids,
                kafka=env.base.kafka,
                counted={"published": pred_topic},
                before=before,
                timeout_s=150,
                progress=on_progress,
                every_s=0.25,
            )
    finally:
        if killed_at:
            kafka_cluster.start_node(victim)
    assert kafka_cluster.wait_full_isr([pred_topic], deadline_s=120) == {}
    retries = sum(1 for r in caplog.records if "retrying" in r.getMessage())
    print(
        f"\nwait finished {time.monotonic() - killed_at[0]:.1f}s after killing {victim}: "
        f"{counts}; lag polls {len(lags)}; Kafka calls retried {retries} times"
    )
    assert acc.complete(), f"{len(acc.missing)} images unaccounted, e.g. {sorted(acc.missing)[:3]}"
    assert len(acc.stored) == len(image_ids) and not acc.rejected and not acc.both
    assert counts["published"] == len(image_ids)
