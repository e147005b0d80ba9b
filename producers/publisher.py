"""The confluent-kafka producer wrapper that publishes images to `images.raw`.

Hygiene after confluent-kafka's producer example: a delivery report for every record,
`poll(0)` after each produce, `BufferError` (local queue full) served as backpressure by
polling until there is room, and a flush on exit that waits for every report. Whatever
is not acknowledged when the flush deadline passes is purged and counted as failed, so
the summary accounts for every input: delivered, failed or skipped.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from infra.kafka_clients import producer_config
from producers.items import BAD_ID, NOT_AN_IMAGE, TOO_LARGE, Item, Skip
from producers.progress import Progress
from producers.settings import ProducerSettings
from producers.summary import Delivered, Problem, Summary
from schemas.image_id import InvalidImageId, image_id_for
from schemas.raw import now_ms, raw_headers, sniff_content_type

log = logging.getLogger(__name__)

# Record batch header (61) + record framing + varints, rounded up generously.
RECORD_OVERHEAD_BYTES = 512
# Backpressure: how long one poll waits for delivery reports when the queue is full.
BACKPRESSURE_POLL_S = 0.05

# Over infra.kafka_clients.PRODUCER_DEFAULTS. Measured (docs/producers.md): the defaults
# (lz4, linger 10 ms, 1 MiB batches) did as well as no compression or other lingers for
# image payloads, so only the client id is set here. Callers and
# PIPELINE_PRODUCER__CLIENT_OVERRIDES can change any of them.
IMAGE_PRODUCER_OVERRIDES: dict[str, Any] = {
    "client.id": "producers",
}


class ProducerLike(Protocol):
    def produce(self, topic: str, value: Any = ..., key: Any = ..., **kw: Any) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...
    def flush(self, timeout: float = ...) -> int: ...
    def purge(self, in_queue: bool = ..., in_flight: bool = ..., blocking: bool = ...) -> None: ...
    def __len__(self) -> int: ...


def _confluent_producer(conf: dict[str, Any]) -> ProducerLike:
    from confluent_kafka import Producer

    return Producer(conf)  # type: ignore[return-value]  # stubs type produce() narrower


def record_size(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    """An upper bound of the record's size as the broker's max.message.bytes counts it."""
    return (
        len(key) + len(value) + sum(len(k) + len(v) + 4 for k, v in headers) + RECORD_OVERHEAD_BYTES
    )


@dataclass
class PublishResult:
    summary: Summary
    # (image_id, produced_at_ms) of every acknowledged record, in acknowledgement order.
    delivered: list[tuple[str, int]] = field(default_factory=list)
    records: list[Delivered] = field(default_factory=list)


@dataclass
class _Pending:
    image_id: str
    produced_at_ms: int
    source: str
    size: int


class Publisher:
    """Publishes Items to one topic; use as a context manager so exit always flushes."""

    def __init__(
        self,
        settings: ProducerSettings,
        *,
        overrides: dict[str, Any] | None = None,
        producer_factory: Callable[[dict[str, Any]], ProducerLike] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self._settings = settings
        self.topic = settings.producer.topic
        self.max_message_bytes = settings.kafka.max_message_bytes
        self._overrides = {
            **IMAGE_PRODUCER_OVERRIDES,
            **settings.producer.client_overrides,
            **(overrides or {}),
        }
        self._factory = producer_factory or _confluent_producer
        self._producer: ProducerLike | None = None
        self._progress = progress
        self._pending: dict[int, _Pending] = {}
        self._seq = 0
        self._sent = 0
        self._ids: set[str] = set()
        self._stop = threading.Event()
        self._closed = False
        self._finished = False
        self._t0 = time.monotonic()
        self._rate = settings.producer.rate
        self.summary = Summary(topic=self.topic)
        self.records: list[Delivered] = []

    # -- lifecycle -------------------------------------------------------------------

    @property
    def producer(self) -> ProducerLike:
        if self._producer is None:
            conf = producer_config(self._settings.kafka, self._overrides)
            conf["error_cb"] = self._on_client_error
            self._producer = self._factory(conf)
            self._t0 = time.monotonic()
        return self._producer

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request_stop(self) -> None:
        """Stop taking new items (signal handlers call this); close() still flushes."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def close(self, timeout_s: float | None = None) -> Summary:
        """Wait for every delivery report (up to the flush timeout), then account for the rest."""
        self._closed = True
        if self._finished:
            return self.summary
        if self._producer is not None:
            deadline = time.monotonic() + (timeout_s or self._settings.producer.flush_timeout_s)
            # Short flushes in a loop: signals are handled between them.
            while self._pending and time.monotonic() < deadline:
                self._producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
            if self._pending:
                log.error(
                    "%d records not acknowledged within the flush timeout; purging them",
                    len(self._pending),
                )
                self._producer.purge(in_queue=True, in_flight=True, blocking=False)
                self._producer.flush(1.0)  # serves the purge's delivery reports
            for seq, p in list(self._pending.items()):
                self._fail(seq, p, "not-delivered", "no delivery report before the flush timeout")
        # Only now: a second signal interrupting the flush above leaves this unset, and
        # the caller's close(timeout_s=...) retry still accounts for every pending record.
        self._finished = True
        self.summary.elapsed_s = time.monotonic() - self._t0
        if self._progress is not None:
            self._progress.close(self.summary)
        return self.summary

    # -- publishing ------------------------------------------------------------------

    def skip(self, skip: Skip) -> None:
        log.warning("skipped %s: %s: %s", skip.source, skip.reason, skip.detail)
        self.summary.skipped += 1
        self.summary.skips.append(Problem(skip.source, skip.reason, skip.detail))
        self._tick()

    def publish(self, item: Item) -> bool:
        """Queue one image; False if it was skipped. Delivery is reported asynchronously."""
        if self._closed:
            raise RuntimeError("publisher is closed")
        content_type = item.content_type or sniff_content_type(item.data)
        if content_type is None:
            self.skip(Skip(item.source, NOT_AN_IMAGE, "no known image signature"))
            return False
        try:
            image_id = image_id_for(item.data, item.image_id)
        except InvalidImageId as exc:
            self.skip(Skip(item.source, BAD_ID, str(exc)))
            return False
        produced_at = now_ms()
        key = image_id.encode()
        source = self._settings.producer.source or item.source
        headers = raw_headers(content_type, source, produced_at)
        size = record_size(key, item.data, headers)
        if size > self.max_message_bytes:
            self.skip(
                Skip(
                    item.source,
                    TOO_LARGE,
                    f"record of ~{size} bytes; {self.topic} accepts at most {self.max_message_bytes}",
                )
            )
            return False
        self._pace()
        producer = self.producer
        self._seq += 1
        seq = self._seq
        pending = _Pending(image_id, produced_at, source, len(item.data))
        self._pending[seq] = pending
        while True:
            try:
                producer.produce(
                    self.topic,
                    value=item.data,
                    key=key,
                    headers=headers,
                    on_delivery=self._reporter(seq),
                )
                break
            except BufferError:
                # Local queue full: serve delivery reports until there is room.
                producer.poll(BACKPRESSURE_POLL_S)
            except Exception as exc:  # KafkaException (e.g. size), TypeError: this record only
                reason = _error_code(exc)
                self._fail(seq, pending, reason, str(exc))
                producer.poll(0)
                return True
        self._sent += 1
        producer.poll(0)
        self._tick()
        return True

    def _pace(self) -> None:
        if self._rate <= 0:
            return
        due = self._t0 + self._sent / self._rate
        while not self._stop.is_set():
            wait = due - time.monotonic()
            if wait <= 0:
                return
            if self._producer is not None:
                self._producer.poll(min(wait, 0.1))  # serve reports while pacing
            else:
                time.sleep(min(wait, 0.1))

    def _reporter(self, seq: int) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            pending = self._pending.get(seq)
            if pending is None:  # already accounted for (e.g. failed at close)
                return
            if err is not None:
                self._fail(seq, pending, f"kafka:{err.name()}", err.str())
                return
            del self._pending[seq]
            self.summary.delivered += 1
            self.summary.bytes += pending.size
            if pending.image_id in self._ids:
                self.summary.duplicate_ids += 1
            self._ids.add(pending.image_id)
            self.records.append(
                Delivered(
                    pending.image_id,
                    pending.produced_at_ms,
                    msg.partition(),
                    msg.offset(),
                    pending.source,
                    pending.size,
                )
            )

        return on_delivery

    def _fail(self, seq: int, pending: _Pending, reason: str, detail: str) -> None:
        self._pending.pop(seq, None)
        log.error("failed %s (id %s): %s: %s", pending.source, pending.image_id, reason, detail)
        self.summary.failed += 1
        self.summary.failures.append(Problem(pending.source, reason, detail, pending.image_id))

    def _on_client_error(self, err: Any) -> None:
        # Client-level errors (a broker down, all brokers down) are retried by librdkafka;
        # records fail only through their delivery reports.
        log.warning("kafka client: %s", err)

    def _tick(self) -> None:
        if self._progress is not None:
            self._progress.update(self._sent + self.summary.skipped, self.summary)


def _error_code(exc: Exception) -> str:
    err = exc.args[0] if exc.args else None
    name = getattr(err, "name", None)
    return f"kafka:{name()}" if callable(name) else type(exc).__name__


@contextmanager
def stop_on_signals(publisher: Publisher) -> Iterator[None]:
    """SIGINT/SIGTERM stop new publishing (the flush still runs); a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: Any) -> None:
        if publisher.stopping:
            raise KeyboardInterrupt
        log.warning("%s: finishing in-flight records, then stopping", signal.Signals(signum).name)
        publisher.request_stop()

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def publish_items(
    items: Iterable[Item | Skip],
    settings: ProducerSettings,
    *,
    progress: Progress | None = None,
    handle_signals: bool = False,
    overrides: dict[str, Any] | None = None,
    producer_factory: Callable[[dict[str, Any]], ProducerLike] | None = None,
) -> PublishResult:
    """Publish every item (Skips are counted) and wait for every delivery report."""
    pub = Publisher(
        settings, overrides=overrides, producer_factory=producer_factory, progress=progress
    )
    signals = stop_on_signals(pub) if handle_signals else _nothing()
    try:
        with signals:
            for it in items:
                if pub.stopping:
                    pub.summary.interrupted = True
                    break
                if isinstance(it, Skip):
                    pub.skip(it)
                else:
                    pub.publish(it)
            pub.close()
    except KeyboardInterrupt:
        pub.summary.interrupted = True
        pub.close(timeout_s=min(5.0, settings.producer.flush_timeout_s))
    finally:
        pub.close()  # no-op if already closed; flushes if an input iterator raised
    summary = pub.summary
    if pub.stopping:
        summary.interrupted = True
    return PublishResult(
        summary,
        delivered=[(d.image_id, d.produced_at_ms) for d in pub.records],
        records=list(pub.records),
    )


def publish_files(
    paths: Iterable[str],
    settings: ProducerSettings,
    *,
    recursive: bool = False,
    image_id: str | None = None,
    **kw: Any,
) -> PublishResult:
    """Publish image files found under `paths` (recognised by content, not extension)."""
    from producers.files import file_items

    limit = settings.kafka.max_message_bytes
    return publish_items(file_items(paths, recursive, limit, image_id), settings, **kw)


@contextmanager
def _nothing() -> Iterator[None]:
    yield
