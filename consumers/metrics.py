"""Prometheus metrics of the sink, served by prometheus_client's HTTP server on loopback.

Counters and gauges are read on scrape from what the sink already keeps (`SinkCounters`,
`WriterStats`, its open records, the driver's host states), so the sink loop does no
extra work for them. Cassandra write latency and rows by table need one observation per
request: `track_request` (one call in writer.py) adds callbacks to the driver's future.

The Kafka side (lag of the partitions this sink holds, brokers in the metadata) comes
from a consumer of the metrics' own that never subscribes, refreshed by a background
thread (`KafkaView`): confluent-kafka serialises a consumer's calls, so a `position()`
from the scrape thread would wait behind the sink's poll (seen: scrapes hanging 10 s+).
Scrapes only read the last refresh, so they never wait on the network.

Internals read here, checked against this repository's consumers/sink.py and writer.py
(the sink is single-threaded; a scrape reads from the HTTP server's thread, so every read
tolerates a dict changing under it and none takes a lock the sink loop holds):
  Sink.counters, Sink._writer (.stats, .in_flight, .fatal), Sink._open, Sink._open_count,
  Sink.assigned, Sink.group_id, Sink.settings (kafka, sink.predictions_topic),
  Sink._cluster (driver metadata: hosts and their is_up).

Settings: `PIPELINE_METRICS__HOST` (default 127.0.0.1), `PIPELINE_METRICS__PORT` (default
9464; orchestration reads it from here), `PIPELINE_METRICS__ENABLED`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consumers.records import PREDICTION, PREDICTION_BY_LABEL, REJECTION
from consumers.settings import SinkMetricsSettings
from schemas import cql

log = logging.getLogger(__name__)

# How often the Kafka view (lag, brokers) is refreshed in the background.
KAFKA_VIEW_INTERVAL_S = 5.0

TABLE_BY_STATEMENT = {
    PREDICTION: cql.PREDICTIONS_TABLE,
    PREDICTION_BY_LABEL: cql.PREDICTIONS_BY_LABEL_TABLE,
    REJECTION: cql.REJECTIONS_TABLE,
}


WRITE_SECONDS = Histogram(
    "torchstream_cassandra_write_duration_seconds",
    "Time from sending a write request (one row or an UNLOGGED batch) to its outcome",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=None,
)
ROWS_WRITTEN = Counter(
    "torchstream_cassandra_rows_written",
    "Row writes Cassandra acknowledged, by table and operation (upsert, delete)",
    ["table", "op"],
    registry=None,
)
DELETE_PREFIX = "delete_"  # consumers.records names deletes delete_<kind>


def table_and_op(statement: str) -> tuple[str, str]:
    """(table, op) of a statement name: prediction -> (predictions, upsert), ..."""
    op = "delete" if statement.startswith(DELETE_PREFIX) else "upsert"
    kind = statement.removeprefix(DELETE_PREFIX)
    return TABLE_BY_STATEMENT.get(kind, kind), op


def track_request(future: Any, statements: Iterable[str]) -> None:
    """Observe one request's latency and rows by table; called right after it is sent.

    The callbacks run on the driver's I/O thread: they only touch thread-safe metrics."""
    started = time.perf_counter()
    names = list(statements)

    def ok(_rows: Any) -> None:
        WRITE_SECONDS.labels("ok").observe(time.perf_counter() - started)
        for name in names:
            ROWS_WRITTEN.labels(*table_and_op(name)).inc()

    def failed(_exc: BaseException) -> None:
        WRITE_SECONDS.labels("error").observe(time.perf_counter() - started)

    future.add_callbacks(callback=ok, errback=failed)


class KafkaView:
    """Lag of the partitions a sink holds and the brokers count, from a consumer of its own.

    Who calls me: `serve_sink_metrics` starts the refresh thread, `close()` stops it; the
    collector reads `lag` and `brokers` (replaced whole under the lock, never mutated).
    The lag is log end minus the group's committed offset, so it counts records consumed
    but not yet acknowledged by Cassandra too (the sink commits only acknowledged ones).
    """

    def __init__(
        self, sink: Any, make_consumer: Callable[[], Any], interval_s: float = KAFKA_VIEW_INTERVAL_S
    ) -> None:
        self._sink = sink
        self._make_consumer = make_consumer
        self._consumer: Any = None
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.lag: dict[tuple[str, int], int] = {}
        self.brokers: int | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metrics-kafka-view", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:  # never let the view kill the sink
                log.warning("metrics: Kafka view refresh failed: %s: %s", type(exc).__name__, exc)
            self._stop.wait(self._interval_s)

    def refresh(self) -> None:
        from confluent_kafka import TopicPartition

        if self._consumer is None:
            self._consumer = self._make_consumer()
        c = self._consumer
        try:
            md = c.list_topics(self._sink.settings.sink.predictions_topic, timeout=2.0)
            brokers = len(md.brokers)
        except Exception as exc:  # no broker answered: none up as far as we can tell
            log.debug("metrics: Kafka metadata unavailable: %s", exc)
            brokers = 0
        lag: dict[tuple[str, int], int] = {}
        held = sorted(_copy_set(self._sink.assigned))
        if brokers and held:
            committed = c.committed([TopicPartition(t, p) for t, p in held], timeout=5.0)
            for tp in committed:
                lo, hi = c.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=2.0, cached=False
                )
                pos = tp.offset if tp.offset >= 0 else lo
                lag[(tp.topic, tp.partition)] = max(0, hi - pos)
        with self._lock:
            self.brokers, self.lag = brokers, lag

    def read(self) -> tuple[int | None, dict[tuple[str, int], int]]:
        with self._lock:
            return self.brokers, self.lag


def _copy_set(items: Any) -> set[Any]:
    """A copy of a set another thread may change meanwhile."""
    for _ in range(5):
        try:
            return set(items)
        except RuntimeError:  # changed size during iteration
            continue
    return set()


class SinkCollector(Collector):
    """Reads a running `consumers.sink.Sink` on every scrape."""

    def __init__(self, sink: Any, kafka: KafkaView | None = None, clock: Any = time.time) -> None:
        self._sink = sink
        self._clock = clock
        self._kafka = kafka

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        out: list[Metric] = []
        for part in (self._counters, self._writer, self._open, self._lag, self._cluster):
            try:
                out.extend(part())
            except Exception as exc:  # one failing read must not empty the scrape
                log.warning("metrics: %s failed: %s: %s", part.__name__, type(exc).__name__, exc)
        return out

    def _counters(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "torchstream_sink_info", "Always 1: the sink's consumer group", labels=["group_id"]
        )
        info.add_metric([str(getattr(self._sink, "group_id", ""))], 1)
        yield info
        c = self._sink.counters
        consumed = CounterMetricFamily(
            "torchstream_sink_records_consumed",
            "Records the sink consumed (predictions and dead letters)",
        )
        consumed.add_metric([], c.records)
        settled = CounterMetricFamily(
            "torchstream_sink_records_settled",
            "Records the sink "
            "finished: stored as a prediction or a rejection, or "
            "dead-lettered (sent to the sink's dead-letter topic)",
            labels=["kind"],
        )
        settled.add_metric(["prediction"], c.predictions)
        settled.add_metric(["rejection"], c.rejections)
        settled.add_metric(["dead_letter"], c.dead_lettered)
        commits = CounterMetricFamily("torchstream_sink_commits", "Synchronous offset commits")
        commits.add_metric([], c.commits)
        yield from (consumed, settled, commits)

    def _writer(self) -> Iterator[Metric]:
        w = getattr(self._sink, "_writer", None)
        if w is None:
            return
        st = w.stats
        for name, doc, value in (
            (
                "torchstream_cassandra_requests",
                "Write requests sent (a row or a batch)",
                st.requests,
            ),
            (
                "torchstream_cassandra_write_retries",
                "Rows re-sent after a retriable error",
                st.retries,
            ),
            ("torchstream_cassandra_write_failures", "Rows given up on (dead-lettered)", st.failed),
            (
                "torchstream_cassandra_batches_split",
                "Batches retried row by row after a non-retriable error",
                st.batches_split,
            ),
        ):
            m = CounterMetricFamily(name, doc)
            m.add_metric([], value)
            yield m
        errors = CounterMetricFamily(
            "torchstream_cassandra_write_errors",
            "Failed write requests by driver error class",
            labels=["error"],
        )
        for cls, n in sorted(dict(st.errors_by_class).items()):
            errors.add_metric([cls], n)
        yield errors
        g = GaugeMetricFamily(
            "torchstream_cassandra_requests_in_flight", "Write requests awaiting Cassandra"
        )
        g.add_metric([], w.in_flight)
        yield g
        fatal = GaugeMetricFamily(
            "torchstream_sink_writes_stopped",
            "1 when Cassandra refused a write for a reason no record can fix and the sink stops",
        )
        fatal.add_metric([], 1 if w.fatal is not None else 0)
        yield fatal

    def _open(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "torchstream_sink_open_records",
            "Records consumed but not yet acknowledged by Cassandra",
        )
        g.add_metric([], self._sink._open_count)
        yield g
        oldest = oldest_open_timestamp_ms(self._sink._open)
        age = GaugeMetricFamily(
            "torchstream_sink_oldest_unacked_age_seconds",
            "Age (from its Kafka timestamp) of the oldest record consumed "
            "and not yet acknowledged; 0 when none is open",
        )
        age.add_metric([], 0.0 if oldest is None else max(0.0, self._clock() - oldest / 1000))
        yield age

    def _lag(self) -> Iterator[Metric]:
        if self._kafka is None:
            return
        _, lag = self._kafka.read()
        g = GaugeMetricFamily(
            "torchstream_consumer_lag_records",
            "Records between a "
            "partition's end and the consumer's position (the sink: its "
            "committed offset), per partition the process holds",
            labels=["stage", "topic", "partition"],
        )
        for (topic, part), n in sorted(lag.items()):
            g.add_metric(["sink", topic, str(part)], n)
        yield g

    def _cluster(self) -> Iterator[Metric]:
        brokers = self._kafka.read()[0] if self._kafka is not None else None
        up = known = None
        cluster = getattr(self._sink, "_cluster", None)
        if cluster is not None:
            hosts = list(cluster.metadata.all_hosts())
            known, up = len(hosts), sum(1 for h in hosts if h.is_up)
        for name, doc, value in (
            (
                "torchstream_kafka_brokers_up",
                "Kafka brokers in the cluster metadata the sink's metrics client sees",
                brokers,
            ),
            ("torchstream_cassandra_nodes_up", "Cassandra nodes the sink's driver holds as up", up),
            (
                "torchstream_cassandra_nodes_known",
                "Cassandra nodes in the driver's metadata",
                known,
            ),
        ):
            if value is not None:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], value)
                yield g


def oldest_open_timestamp_ms(open_records: Any) -> int | None:
    """The smallest Kafka timestamp among open records ({tp: {offset: PendingRecord}}).

    Read from another thread: a dict that changes meanwhile is read again (a few tries)."""
    for _ in range(5):
        try:
            stamps = [
                pr.rec.timestamp_ms
                for recs in list(open_records.values())
                for pr in list(recs.values())
                if pr.rec.timestamp_ms > 0
            ]
        except RuntimeError:  # changed size during iteration
            continue
        return min(stamps) if stamps else None
    return None


def build_registry(sink: Any, kafka: KafkaView | None = None) -> CollectorRegistry:
    # Every series exists from the start at 0, so a rate() sees the first writes too.
    for table in TABLE_BY_STATEMENT.values():
        for op in ("upsert", "delete"):
            ROWS_WRITTEN.labels(table, op)
    for outcome in ("ok", "error"):
        WRITE_SECONDS.labels(outcome)
    reg = CollectorRegistry()
    reg.register(SinkCollector(sink, kafka))
    reg.register(WRITE_SECONDS)
    reg.register(ROWS_WRITTEN)
    ProcessCollector(registry=reg)
    reg.register(PLATFORM_COLLECTOR)
    reg.register(GC_COLLECTOR)
    return reg


class MetricsServer:
    """The sink's /metrics endpoint; `close()` stops it."""

    def __init__(self, server: Any, kafka: KafkaView | None, address: tuple[str, int]) -> None:
        self._server = server
        self._kafka = kafka
        self.address = address

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._kafka is not None:
            self._kafka.close()


def _metrics_consumer(sink: Any) -> Callable[[], Any]:
    """A consumer in the sink's group that never subscribes (it only reads the group's
    committed offsets and the watermarks), so it never joins or rebalances the group."""

    def make() -> Any:
        from confluent_kafka import Consumer

        from infra.kafka_clients import consumer_config

        return Consumer(
            consumer_config(
                sink.settings.kafka,
                sink.group_id,
                {"client.id": f"vision-sink-metrics-{sink.group_id}", "enable.auto.commit": False},
            )
        )

    return make


def serve_sink_metrics(
    sink: Any,
    settings: SinkMetricsSettings | None = None,
    make_consumer: Callable[[], Any] | None = None,
) -> MetricsServer | None:
    """Start the endpoint for `sink` (before sink.run); None when disabled.

    A port that is taken is logged as an error and the sink runs on without metrics:
    losing the endpoint must not stop the data path (Prometheus' `up` shows it)."""
    ms = (settings or SinkMetricsSettings()).metrics
    if not ms.enabled:
        return None
    kafka = KafkaView(sink, make_consumer or _metrics_consumer(sink))
    try:
        server, _thread = start_http_server(
            ms.port, addr=ms.host, registry=build_registry(sink, kafka)
        )
    except OSError as exc:
        log.error(
            "metrics endpoint %s:%d not started: %s (set PIPELINE_METRICS__PORT)",
            ms.host,
            ms.port,
            exc,
        )
        return None
    kafka.start()
    log.info("metrics at http://%s:%d/metrics", ms.host, ms.port)
    return MetricsServer(server, kafka, (ms.host, ms.port))
