"""Metrics of a real run: every worker and the sink scraped directly (prometheus_client's
parser), and a real Prometheus (python -m orchestration monitor's) showing the pipeline's rates.

The run publishes synthetic photos plus raw records no decoder accepts, waits until each
is stored or rejected, and then checks what the endpoints say about that run (deltas
against a scrape taken before it, so earlier tests on the shared pipeline do not count).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import socket
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Producer
from e2e_harness import Pipeline, _env, assert_accounted
from prometheus_client.parser import text_string_to_metric_families

from infra.kafka_clients import producer_config
from orchestration.monitor import Monitor
from orchestration.service_facts import SINK_METRICS_PORT_ENV
from orchestration.targets import JOB_SINK, JOB_WORKER, ScrapeTarget, scrape_targets
from producers.synthetic import synthetic_items
from schemas.raw import raw_headers
from stream_app.settings import StreamSettings

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

GOOD = 24
STAGES = ("decode", "infer", "postprocess")


def _working_stages(pipeline: Pipeline) -> tuple[str, ...]:
    """The stages whose agents see this run's records. A fused stage runs in its
    predecessor's agent and its records count as that agent's: with decode and infer
    fused (the default) decode's agent infers too, and infer's own agent (on
    images.decoded, which fused workers never write) sees none; likewise postprocess
    when fused."""
    with _env(pipeline.env):
        w = StreamSettings().stream.worker
    return tuple(
        stage
        for stage, fused in zip(
            STAGES, (False, w.fuse_decode_infer, w.fuse_postprocess), strict=True
        )
        if not fused
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(target: ScrapeTarget) -> Samples:
    body = urllib.request.urlopen(f"http://{target.address}/metrics", timeout=10).read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def _try_scrape(target: ScrapeTarget) -> Samples | None:
    try:
        return _scrape(target)
    except OSError:  # not listening yet (the sink starts its endpoint as it starts)
        return None


def _sum(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _total(scrapes: dict[str, Samples], name: str, **labels: str) -> float:
    return sum(_sum(s, name, **labels) for s in scrapes.values())


def _scrape_all(targets: list[ScrapeTarget]) -> dict[str, Samples]:
    return {t.address: _scrape(t) for t in targets}


def _eventually(what: str, probe: Callable[[], object], timeout_s: float = 90.0) -> object:
    """Poll `probe` until it returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def own_sink_port(healthy: Pipeline) -> Pipeline:
    """The session's sink on a metrics port of its own: a demo or another sink on this
    machine may hold the default one. Restarted once when its spec names no port."""
    spec = healthy.services.spec("sink-1")
    if SINK_METRICS_PORT_ENV not in spec.env:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        healthy.services.stop("sink-1")
        healthy.services.start(
            dataclasses.replace(spec, env={**spec.env, SINK_METRICS_PORT_ENV: str(port)})
        )
        healthy.wait_ready()
    return healthy


@pytest.fixture
def prometheus(own_sink_port: Pipeline) -> Iterator[Monitor]:
    healthy = own_sink_port
    if shutil.which("prometheus") is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("prometheus missing in CI: infra/setup-system.sh must install it")
        pytest.skip("prometheus not installed (bash infra/setup-system.sh installs it)")
    mon = Monitor(healthy.run_dir)
    mon.up(scrape_interval_s=1.0)
    try:
        yield mon
    finally:
        mon.down()


def test_metrics_of_a_run_scraped_and_in_prometheus(healthy: Pipeline, prometheus: Monitor) -> None:
    targets = scrape_targets(healthy.run_dir)
    jobs = defaultdict(list)
    for t in targets:
        jobs[t.job].append(t)
    assert len(jobs[JOB_WORKER]) == 2 and len(jobs[JOB_SINK]) == 1, targets
    workers, sink = jobs[JOB_WORKER], jobs[JOB_SINK][0]

    # Prometheus holds a sample of every target from before the run (a short run can end
    # before its first scrape, and a rate needs the counters' values before it).
    def all_up() -> bool:
        health = prometheus.target_health()
        return len(health) == 3 and all(h["health"] == "up" for h in health)

    _eventually("every target scraped by prometheus", all_up)
    before_w = _scrape_all(workers)
    before_s = _eventually("the sink's metrics endpoint", lambda: _try_scrape(sink))
    assert isinstance(before_s, dict)
    # the endpoints are this pipeline's processes, not a demo's on the same ports
    assert _sum(before_s, "torchstream_sink_info", group_id=healthy.sink_group) == 1
    for t in workers:
        assert (
            _sum(before_w[t.address], "torchstream_worker_info", app_id=healthy.stream_group) == 1
        ), t

    rng = random.Random()
    res = healthy.publish(synthetic_items(GOOD, (160, 120), seed=rng.randrange(1 << 30)))
    good = [i for i, _ in res.delivered]
    assert len(good) == GOOD
    garbage = {
        f"metrics-garbage-{i}-{rng.randrange(1 << 40):x}": bytes(
            rng.randrange(256) for _ in range(1024)
        )
        for i in range(3)
    }
    p = Producer(producer_config(healthy.kafka))
    for image_id, value in garbage.items():
        p.produce(
            healthy.raw_topic,
            value=value,
            key=image_id.encode(),
            headers=raw_headers("image/png", "metrics-test"),
        )
    assert p.flush(60) == 0
    ids = good + list(garbage)
    acc = healthy.wait_accounted(ids)
    assert_accounted(acc, ids, healthy.diagnose)
    assert set(garbage) <= set(acc.rejected)

    # -- the endpoints, scraped directly ----------------------------------------------
    stages = _working_stages(healthy)
    # A fused agent writes the predictions itself: the sink can store the last one before
    # that agent has counted its batch, so wait (with a deadline) until it has.
    deadline = time.monotonic() + 30
    while True:
        after_w = _scrape_all(workers)
        counted = _total(after_w, "torchstream_stage_input_age_seconds_count", stage="decode")
        if (
            counted
            >= _total(before_w, "torchstream_stage_input_age_seconds_count", stage="decode")
            + len(ids)
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.5)
    for stage in stages:
        delta = _total(after_w, "torchstream_stage_records_in_total", stage=stage) - _total(
            before_w, "torchstream_stage_records_in_total", stage=stage
        )
        expected = len(ids) if stage == "decode" else GOOD  # at least once: maybe more
        assert delta >= expected, (stage, delta)
        assert _total(
            after_w, "torchstream_stage_batch_duration_seconds_count", stage=stage
        ) > _total(before_w, "torchstream_stage_batch_duration_seconds_count", stage=stage)
        assert (
            _total(after_w, "torchstream_stage_input_age_seconds_count", stage=stage)
            >= _total(before_w, "torchstream_stage_input_age_seconds_count", stage=stage) + expected
        )
    dead = _total(after_w, "torchstream_stage_dead_letters_total", stage="decode") - _total(
        before_w, "torchstream_stage_dead_letters_total", stage="decode"
    )
    assert dead >= len(garbage)
    for idle in set(STAGES) - set(stages):  # fused: nothing crossed the topic it reads
        assert _total(after_w, "torchstream_stage_records_in_total", stage=idle) == _total(
            before_w, "torchstream_stage_records_in_total", stage=idle
        )
    reasons = {
        dict(ls)["reason"]
        for s in after_w.values()
        for (n, ls) in s
        if n == "torchstream_stage_dead_letters_total"
    }
    assert reasons & {"not-an-image", "corrupt", "truncated"}, reasons
    out_topics = {
        dict(ls)["topic"]
        for s in after_w.values()
        for (n, ls) in s
        if n == "torchstream_stage_records_out_total"
    }
    assert healthy.topic("images.predictions") in out_topics
    forward = _total(after_w, "torchstream_model_forward_batch_images_sum") - _total(
        before_w, "torchstream_model_forward_batch_images_sum"
    )
    assert forward >= GOOD
    assert _total(after_w, "torchstream_model_forward_duration_seconds_sum") > 0
    for t in workers:
        s = after_w[t.address]
        assert _sum(s, "process_resident_memory_bytes") > 100e6, t  # torch + the model
        assert _sum(s, "process_cpu_seconds_total") > 0, t
        assert any(n == "torchstream_consumer_lag_records" for n, _ in s), t

    after_s = _scrape(sink)

    def sink_delta(name: str, **labels: str) -> float:
        return _sum(after_s, name, **labels) - _sum(before_s, name, **labels)

    assert sink_delta("torchstream_sink_records_settled_total", kind="prediction") >= GOOD
    assert sink_delta("torchstream_sink_records_settled_total", kind="rejection") >= len(garbage)
    assert (
        sink_delta("torchstream_cassandra_rows_written_total", table="predictions", op="upsert")
        >= GOOD
    )
    assert sink_delta(
        "torchstream_cassandra_rows_written_total", table="rejections", op="upsert"
    ) >= len(garbage)
    assert sink_delta("torchstream_cassandra_write_duration_seconds_count", outcome="ok") > 0
    assert _sum(after_s, "torchstream_kafka_brokers_up") == 3
    assert _sum(after_s, "torchstream_cassandra_nodes_up") == 3
    assert _sum(after_s, "torchstream_sink_writes_stopped") == 0
    assert _sum(after_s, "process_resident_memory_bytes") > 20e6

    # -- Prometheus: the run's rates, the rules loaded -------------------------------
    seen: dict[str, float] = {}

    def rates() -> bool:
        seen.clear()
        seen.update(
            {
                r["metric"]["stage"]: float(r["value"][1])
                for r in prometheus.query(
                    "sum by (stage) (rate(torchstream_stage_records_in_total[2m]))"
                )
            }
        )
        rows = prometheus.query("sum(rate(torchstream_cassandra_rows_written_total[2m]))")
        seen["cassandra_rows"] = float(rows[0]["value"][1]) if rows else 0.0
        return all(seen.get(k, 0) > 0 for k in (*stages, "cassandra_rows"))

    try:
        _eventually("non-zero rates of every stage and of Cassandra rows", rates)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; rates seen: {seen}") from None

    decoded = prometheus.query('sum(torchstream_stage_records_in_total{stage="decode"})')
    assert float(decoded[0]["value"][1]) >= _total(
        before_w, "torchstream_stage_records_in_total", stage="decode"
    ) + len(ids)
    brokers = prometheus.query("max(torchstream_kafka_brokers_up)")
    assert float(brokers[0]["value"][1]) == 3

    groups = prometheus.api("rules")["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert {
        "StageStalled",
        "SinkCannotWrite",
        "KafkaBrokersDown",
        "CassandraNodesDown",
        "DeadLetterRateHigh",
        "ConsumerLagGrowing",
        "ServiceDown",
    } <= set(rules)
    assert rules["KafkaBrokersDown"]["state"] == "inactive"
    assert rules["CassandraNodesDown"]["state"] == "inactive"
