"""The read-on-scrape collectors of stream_app/metrics.py and consumers/metrics.py, without
servers: fake snapshots and a fake sink, parsed back with prometheus_client's parser."""

from __future__ import annotations

import socket
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumers import metrics as sink_metrics
from consumers.sink import SinkCounters
from consumers.writer import WriterStats
from stream_app import metrics as stream_metrics
from stream_app.records import InRecord


def _samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


SNAPSHOT = {
    "status": "ok",
    "app_id": "torchstream",
    "model": {"name": "efficientnet-lite0", "version": "1"},
    "stages": [
        {
            "stage": "decode",
            "source": "p.images.raw",
            "records_in": 10,
            "records_out": 8,
            "dead_letters": 2,
            "dead_letter_reasons": {"not-an-image": 2},
            "batches": 3,
            "failed_batches": 0,
            "lag": {"0": 5, "1": None, "10": 0},
            "seconds_since_last_batch": 2.0,
            "oldest_unacked_age_s": 1.5,
            "stalled": True,
        },
        {
            "stage": "infer",
            "source": "p.images.decoded",
            "records_in": 0,
            "records_out": 0,
            "dead_letters": 0,
            "dead_letter_reasons": {},
            "batches": 0,
            "failed_batches": 0,
            "lag": {},
            "seconds_since_last_batch": None,
        },
    ],
}


def test_stage_metrics_from_a_health_snapshot() -> None:
    reg = stream_metrics.build_registry(lambda: SNAPSHOT, prefix="p.")
    s = _samples(generate_latest(reg))
    assert (
        s[("torchstream_stage_records_in_total", (("stage", "decode"), ("topic", "p.images.raw")))]
        == 10
    )
    assert (
        s[
            (
                "torchstream_stage_records_out_total",
                (("stage", "decode"), ("topic", "p.images.decoded")),
            )
        ]
        == 8
    )
    assert (
        s[
            (
                "torchstream_stage_dead_letters_total",
                (("reason", "not-an-image"), ("stage", "decode"), ("topic", "p.images.decode.dlq")),
            )
        ]
        == 2
    )
    lag = {k[1]: v for k, v in s.items() if k[0] == "torchstream_consumer_lag_records"}
    # an unknown lag (None) is left out rather than reported as 0
    assert lag == {
        (("partition", "0"), ("stage", "decode"), ("topic", "p.images.raw")): 5,
        (("partition", "10"), ("stage", "decode"), ("topic", "p.images.raw")): 0,
    }
    assert ("torchstream_stage_last_batch_timestamp_seconds", (("stage", "infer"),)) not in s
    assert s[("torchstream_stage_oldest_unacked_age_seconds", (("stage", "decode"),))] == 1.5
    assert s[("torchstream_stage_stalled", (("stage", "decode"),))] == 1
    # a snapshot without the liveness fields: no made-up values
    assert ("torchstream_stage_stalled", (("stage", "infer"),)) not in s
    assert (
        s[
            (
                "torchstream_stage_records_in_total",
                (("stage", "infer"), ("topic", "p.images.decoded")),
            )
        ]
        == 0
    )
    assert any(k[0] == "process_resident_memory_bytes" for k in s)
    assert any(k[0] == "process_cpu_seconds_total" for k in s)
    assert (
        s[
            (
                "torchstream_worker_info",
                (
                    ("app_id", "torchstream"),
                    ("model", "efficientnet-lite0"),
                    ("model_version", "1"),
                ),
            )
        ]
        == 1
    )


def test_stage_metrics_last_batch_time() -> None:
    fams = {m.name: m for m in stream_metrics.stage_metrics(SNAPSHOT, "", now=1000.0)}
    (sample,) = fams["torchstream_stage_last_batch_timestamp_seconds"].samples
    assert sample.value == 998.0 and sample.labels == {"stage": "decode"}


def test_a_failing_snapshot_leaves_only_process_metrics() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("consumer not started")

    s = _samples(generate_latest(stream_metrics.build_registry(broken)))
    assert not any(k[0].startswith("torchstream_stage_records") for k in s)
    assert any(k[0] == "process_resident_memory_bytes" for k in s)


def _count(name: str, **labels: str) -> float:
    reg = stream_metrics.build_registry(lambda: {"stages": []})
    return _samples(generate_latest(reg)).get((name, tuple(sorted(labels.items()))), 0.0)


def test_observe_batch_and_forward_timer() -> None:
    before = _count("torchstream_stage_batch_size_records_count", stage="unit")
    age_before = _count("torchstream_stage_input_age_seconds_count", stage="unit")
    recs = [InRecord("t", 0, i, b"k", b"v", timestamp_ms=ts) for i, ts in enumerate((1, None, 2))]
    stream_metrics.observe_batch("unit", recs, 0.3)
    assert _count("torchstream_stage_batch_size_records_count", stage="unit") == before + 1
    assert _count("torchstream_stage_batch_size_records_sum", stage="unit") >= 3
    # a record without a timestamp has no age
    assert _count("torchstream_stage_input_age_seconds_count", stage="unit") == age_before + 2
    f_before = _count("torchstream_model_forward_batch_images_count")
    with stream_metrics.forward_timer(4):
        pass
    with pytest.raises(ValueError), stream_metrics.forward_timer(4):
        raise ValueError("model failed")
    assert _count("torchstream_model_forward_batch_images_count") == f_before + 1


# -- sink ------------------------------------------------------------------------------
@dataclass
class _Rec:
    timestamp_ms: int


@dataclass
class _Pending:
    rec: _Rec


@dataclass
class _Writer:
    stats: WriterStats = field(default_factory=WriterStats)
    in_flight: int = 3
    fatal: Any = None


class _Host:
    def __init__(self, up: bool) -> None:
        self.is_up = up


class _Cluster:
    class metadata:  # noqa: N801 - mimics the driver's attribute
        @staticmethod
        def all_hosts() -> list[_Host]:
            return [_Host(True), _Host(False), _Host(True)]


class _Metadata:
    brokers = {1: object(), 2: object(), 3: object()}


class FakeKafkaConsumer:
    """The metrics' own consumer: metadata, committed offsets, watermarks."""

    def __init__(
        self,
        committed: dict[tuple[str, int], int],
        ends: dict[tuple[str, int], int],
        down: bool = False,
    ) -> None:
        self._committed, self._ends, self.down = committed, ends, down
        self.calls = 0
        self.closed = False

    def list_topics(self, topic: str, timeout: float) -> _Metadata:
        self.calls += 1
        if self.down:
            raise RuntimeError("KafkaException: all brokers down")
        return _Metadata()

    def committed(self, tps: list[Any], timeout: float) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [
            TopicPartition(
                tp.topic, tp.partition, self._committed.get((tp.topic, tp.partition), -1001)
            )
            for tp in tps
        ]

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        assert not cached  # the view asks the broker
        return 2, self._ends[(tp.topic, tp.partition)]

    def close(self) -> None:
        self.closed = True


class _Settings:
    class sink:  # noqa: N801
        predictions_topic = "images.predictions"


class FakeSink:
    def __init__(self) -> None:
        self.counters = SinkCounters(records=12, predictions=9, rejections=2, dead_lettered=1)
        self._writer = _Writer(
            WriterStats(
                rows_written=20,
                requests=7,
                retries=4,
                failed=1,
                errors_by_class={"WriteTimeout": 4},
            )
        )
        self._open = {
            ("images.predictions", 0): {5: _Pending(_Rec(100_000)), 6: _Pending(_Rec(0))},
            ("images.predictions", 1): {9: _Pending(_Rec(94_000))},
        }
        self._open_count = 3
        self._cluster = _Cluster()
        self.settings = _Settings()
        self.group_id = "vision-sink"
        self.assigned = {("images.predictions", 0), ("images.predictions", 1)}


def _fake_consumer() -> FakeKafkaConsumer:
    # partition 0: committed 10 of 10; partition 1: nothing committed yet (from low = 2)
    return FakeKafkaConsumer(
        {("images.predictions", 0): 10},
        {("images.predictions", 0): 10, ("images.predictions", 1): 6},
    )


def test_sink_collector_reads_the_sink() -> None:
    sink = FakeSink()
    kafka = sink_metrics.KafkaView(sink, _fake_consumer)
    kafka.refresh()
    reg = sink_metrics.build_registry(sink, kafka)
    collector = sink_metrics.SinkCollector(sink, kafka, clock=lambda: 100.0)
    s = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for m in collector.collect()
        for x in m.samples
    }
    assert s[("torchstream_sink_records_consumed_total", ())] == 12
    assert s[("torchstream_sink_info", (("group_id", "vision-sink"),))] == 1
    assert s[("torchstream_sink_records_settled_total", (("kind", "prediction"),))] == 9
    assert s[("torchstream_sink_records_settled_total", (("kind", "dead_letter"),))] == 1
    assert s[("torchstream_cassandra_write_retries_total", ())] == 4
    assert s[("torchstream_cassandra_write_errors_total", (("error", "WriteTimeout"),))] == 4
    assert s[("torchstream_cassandra_requests_in_flight", ())] == 3
    assert s[("torchstream_sink_writes_stopped", ())] == 0
    assert s[("torchstream_sink_open_records", ())] == 3
    assert s[("torchstream_sink_oldest_unacked_age_seconds", ())] == pytest.approx(6.0)
    assert (
        s[
            (
                "torchstream_consumer_lag_records",
                (("partition", "0"), ("stage", "sink"), ("topic", "images.predictions")),
            )
        ]
        == 0
    )
    assert (
        s[
            (
                "torchstream_consumer_lag_records",
                (("partition", "1"), ("stage", "sink"), ("topic", "images.predictions")),
            )
        ]
        == 4
    )
    assert s[("torchstream_kafka_brokers_up", ())] == 3
    assert s[("torchstream_cassandra_nodes_up", ())] == 2
    assert s[("torchstream_cassandra_nodes_known", ())] == 3
    # scrapes read the last refresh: they never call Kafka themselves
    consumer = kafka._consumer
    list(collector.collect())
    assert consumer.calls == 1
    assert b"torchstream_sink_open_records 3.0" in generate_latest(reg)


def test_sink_collector_survives_a_failing_part() -> None:
    sink = FakeSink()

    class Broken:
        @property
        def metadata(self) -> Any:
            raise RuntimeError("driver shut down")

    sink._cluster = Broken()  # type: ignore[assignment]
    names = {m.name for m in sink_metrics.SinkCollector(sink).collect()}
    assert "torchstream_sink_open_records" in names
    assert "torchstream_cassandra_nodes_up" not in names


def test_kafka_view_with_every_broker_down_reports_zero_brokers() -> None:
    sink = FakeSink()
    view = sink_metrics.KafkaView(sink, lambda: FakeKafkaConsumer({}, {}, down=True))
    view.refresh()
    assert view.read() == (0, {})
    fams = {m.name: m for m in sink_metrics.SinkCollector(sink, view).collect()}
    assert fams["torchstream_kafka_brokers_up"].samples[0].value == 0


def test_oldest_open_timestamp_ignores_missing_stamps() -> None:
    assert sink_metrics.oldest_open_timestamp_ms({}) is None
    assert sink_metrics.oldest_open_timestamp_ms({("t", 0): {1: _Pending(_Rec(0))}}) is None
    assert sink_metrics.oldest_open_timestamp_ms(FakeSink()._open) == 94_000


class _Future:
    def __init__(self) -> None:
        self.callbacks: list[tuple[Any, Any]] = []

    def add_callbacks(self, callback: Any, errback: Any) -> None:
        self.callbacks.append((callback, errback))


def _sink_sample(name: str, **labels: str) -> float:
    reg = sink_metrics.build_registry(FakeSink())
    return _samples(generate_latest(reg)).get((name, tuple(sorted(labels.items()))), 0.0)


def test_track_request_counts_rows_by_table_and_latency() -> None:
    def rows(table: str, op: str = "upsert") -> float:
        return _sink_sample("torchstream_cassandra_rows_written_total", table=table, op=op)

    before = (rows("predictions"), rows("predictions_by_label"), rows("rejections", "delete"))
    rejections = rows("rejections")
    errs = _sink_sample("torchstream_cassandra_write_duration_seconds_count", outcome="error")
    ok, failed = _Future(), _Future()
    sink_metrics.track_request(
        ok, ["prediction", "prediction_by_label", "delete_rejection", "prediction"]
    )
    sink_metrics.track_request(failed, ["rejection"])
    ok.callbacks[0][0]([])
    failed.callbacks[0][1](RuntimeError("timeout"))
    after = (rows("predictions"), rows("predictions_by_label"), rows("rejections", "delete"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1]
    assert rows("rejections") == rejections  # the failed request wrote nothing
    assert (
        _sink_sample("torchstream_cassandra_write_duration_seconds_count", outcome="error")
        == errs + 1
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sink_endpoint_serves_and_a_taken_port_does_not_stop_the_sink() -> None:
    port = _free_port()
    settings = sink_metrics.SinkMetricsSettings(metrics={"port": port})
    consumers: list[FakeKafkaConsumer] = []

    def make() -> FakeKafkaConsumer:
        consumers.append(_fake_consumer())
        return consumers[-1]

    server = sink_metrics.serve_sink_metrics(FakeSink(), settings, make_consumer=make)
    assert server is not None
    lag_key = (
        "torchstream_consumer_lag_records",
        (("partition", "1"), ("stage", "sink"), ("topic", "images.predictions")),
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # the background refresh fills in the Kafka view
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            samples = _samples(body)
            if lag_key in samples or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert ("torchstream_sink_records_consumed_total", ()) in samples
        assert samples[lag_key] == 4
        # a second sink on the same port: logged, no exception, no endpoint
        assert sink_metrics.serve_sink_metrics(FakeSink(), settings, make_consumer=make) is None
    finally:
        server.close()
    assert consumers and consumers[0].closed
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_sink_metrics_can_be_disabled() -> None:
    settings = sink_metrics.SinkMetricsSettings(metrics={"enabled": False})
    assert sink_metrics.serve_sink_metrics(FakeSink(), settings) is None


def test_fused_stage_metrics_name_the_topics_really_written() -> None:
    from stream_app.health import StageStats

    st = StageStats("decode", "p.images.raw")
    sent: list[tuple[str, str | None]] = [
        ("p.images.inferred", None),
        ("p.images.inferred", None),
        ("p.images.decode.dlq", "corrupt"),
        ("p.images.infer.dlq", "non-finite"),
    ]
    st.batch_done(4, 2, 2, 0.1, ["corrupt", "non-finite"], {0: 4}, sent)
    snap = {"stages": [st.snapshot([0], 60.0)]}
    s = _samples(generate_latest(stream_metrics.build_registry(lambda: snap, prefix="p.")))
    out = {
        dict(k[1])["topic"]: v
        for k, v in s.items()
        if k[0] == "torchstream_stage_records_out_total"
    }
    assert out == {"p.images.inferred": 2}  # not images.decoded, which a fused stage never writes
    dead = {
        (dict(k[1])["topic"], dict(k[1])["reason"]): v
        for k, v in s.items()
        if k[0] == "torchstream_stage_dead_letters_total"
    }
    assert dead == {("p.images.decode.dlq", "corrupt"): 1, ("p.images.infer.dlq", "non-finite"): 1}
