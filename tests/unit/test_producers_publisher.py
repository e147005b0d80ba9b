"""The publisher against a fake producer (edge cases) and librdkafka's in-process mock cluster."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from producers import Item, ProducerSettings, Publisher, Skip, publish_items
from producers.publisher import RECORD_OVERHEAD_BYTES, record_size
from producers.synthetic import synthetic_items
from schemas import topics
from schemas.image_id import content_id
from schemas.raw import parse_raw

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100
PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 100

# -- a stand-in for confluent_kafka.Producer: a bounded local queue, delivery on poll --


@dataclass
class FakeError:
    code: str
    text: str = "failed"

    def name(self) -> str:
        return self.code

    def str(self) -> str:
        return self.text


class FakeMsg:
    def __init__(
        self, topic: str, key: bytes, value: bytes, headers: list, partition: int, offset: int
    ):
        self._t, self._k, self._v, self._h, self._p, self._o = (
            topic,
            key,
            value,
            headers,
            partition,
            offset,
        )

    def topic(self) -> str:
        return self._t

    def key(self) -> bytes:
        return self._k

    def value(self) -> bytes:
        return self._v

    def headers(self) -> list:
        return self._h

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


class FakeProducer:
    def __init__(
        self,
        conf: dict[str, Any],
        *,
        capacity: int = 1_000_000,
        fail: Callable[[bytes], FakeError | None] = lambda key: None,
        stuck: bool = False,
        served_by_poll0: int = 1,
    ) -> None:
        self.served_by_poll0 = served_by_poll0  # reports a poll(0) serves: 0 = a slow cluster
        self.conf = conf
        self.capacity = capacity
        self.fail = fail
        self.stuck = stuck  # never acknowledges (a cluster that is down)
        self.queue: list[tuple[FakeMsg, Callable]] = []
        self.produced: list[FakeMsg] = []
        self.buffer_errors = 0
        self.polls = 0
        self.purged = 0
        self._offset = 0

    def produce(
        self, topic: str, value: bytes = b"", key: bytes = b"", headers=None, on_delivery=None
    ) -> None:
        if len(self.queue) >= self.capacity:
            self.buffer_errors += 1
            raise BufferError("Local: Queue full")
        msg = FakeMsg(topic, key, value, list(headers or []), len(self.produced) % 6, self._offset)
        self._offset += 1
        self.produced.append(msg)
        self.queue.append((msg, on_delivery))

    def _deliver(self, n: int | None = None) -> int:
        if self.stuck:
            return 0
        served = 0
        while self.queue and (n is None or served < n):
            msg, cb = self.queue.pop(0)
            cb(self.fail(msg.key()), msg)
            served += 1
        return served

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        # A zero-timeout poll serves one report; a blocking one drains the queue.
        return self._deliver(self.served_by_poll0 if timeout == 0 else None)

    def flush(self, timeout: float = -1) -> int:
        self._deliver()
        return len(self.queue)

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        queued, self.queue = self.queue, []
        for msg, cb in queued:
            self.purged += 1
            cb(FakeError("_PURGE_QUEUE", "Local: Purged in queue"), msg)

    def __len__(self) -> int:
        return len(self.queue)


# -- tests --


def settings(**producer: object) -> ProducerSettings:
    return ProducerSettings.model_validate({"producer": producer})


def run(items, fake: FakeProducer | None = None, s: ProducerSettings | None = None, **kw):
    holder: dict[str, FakeProducer] = {}

    def factory(conf):
        holder["p"] = fake if fake is not None else FakeProducer(conf)
        holder["p"].conf = conf
        return holder["p"]

    result = publish_items(items, s or settings(), producer_factory=factory, **kw)
    return result, holder.get("p")


def test_every_record_has_id_key_unchanged_value_and_raw_headers() -> None:
    items = [Item(JPEG, "a.jpg"), Item(PNG, "b", image_id="cam-1/0001")]
    result, p = run(items)
    assert [m.topic() for m in p.produced] == [topics.RAW, topics.RAW]
    assert [m.key() for m in p.produced] == [content_id(JPEG).encode(), b"cam-1/0001"]
    assert [m.value() for m in p.produced] == [JPEG, PNG]
    for m, (ctype, src) in zip(
        p.produced, [("image/jpeg", "a.jpg"), ("image/png", "b")], strict=True
    ):
        raw = parse_raw(m.key(), m.value(), m.headers())
        assert (raw.content_type, raw.source) == (ctype, src)
        assert [k for k, _ in m.headers()] == ["content-type", "source", "produced-at"]
    assert result.summary.delivered == 2 and result.summary.exit_code() == 0
    assert result.delivered == [
        (content_id(JPEG), int(dict(p.produced[0].headers())["produced-at"])),
        ("cam-1/0001", int(dict(p.produced[1].headers())["produced-at"])),
    ]
    assert result.summary.bytes == len(JPEG) + len(PNG)


def test_config_is_durable_and_layered() -> None:
    _, p = run([Item(JPEG, "a")], s=settings(client_overrides={"linger.ms": 77}))
    conf = p.conf
    assert conf["acks"] == "all"
    assert conf["enable.idempotence"] is True
    assert conf["linger.ms"] == 77
    assert conf["message.max.bytes"] > ProducerSettings().kafka.max_message_bytes
    assert callable(conf["error_cb"])


def test_buffer_error_is_backpressure_not_loss() -> None:
    fake = FakeProducer({}, capacity=3, served_by_poll0=0)
    items = list(synthetic_items(40, (16, 16)))
    result, p = run(items, fake)
    assert p.buffer_errors > 0
    assert result.summary.delivered == 40 and result.summary.failed == 0
    assert len({i for i, _ in result.delivered}) == 40


def test_failed_deliveries_are_counted_with_reason() -> None:
    bad = content_id(PNG).encode()
    fake = FakeProducer(
        {},
        fail=lambda k: (
            FakeError("_MSG_TIMED_OUT", "Local: Message timed out") if k == bad else None
        ),
    )
    result, _ = run([Item(JPEG, "ok.jpg"), Item(PNG, "bad.png")], fake)
    s = result.summary
    assert (s.delivered, s.failed) == (1, 1)
    assert s.failures[0].source == "bad.png"
    assert s.failures[0].reason == "kafka:_MSG_TIMED_OUT"
    assert s.failures[0].image_id == content_id(PNG)
    assert s.exit_code() == 1
    assert result.delivered == [(content_id(JPEG), result.records[0].produced_at_ms)]
    assert "bad.png: kafka:_MSG_TIMED_OUT" in s.format_text()


def test_unacknowledged_records_fail_after_flush_timeout() -> None:
    fake = FakeProducer({}, stuck=True)
    s = settings(flush_timeout_s=0.2)
    t0 = time.monotonic()
    result, p = run([Item(JPEG, "a"), Item(PNG, "b")], fake, s)
    assert time.monotonic() - t0 < 5
    assert result.summary.failed == 2 and result.summary.delivered == 0
    assert p.purged == 2
    assert {f.reason for f in result.summary.failures} == {"kafka:_PURGE_QUEUE"}


def test_skips_name_their_reason_and_the_rest_is_published() -> None:
    big = b"\xff\xd8\xff" + b"\x00" * (1024 * 1024)
    items = [
        Item(b"just text", "notes.jpg"),
        Skip("gone.png", "unreadable", "no such file or directory"),
        Item(big, "huge.jpg"),
        Item(JPEG, "bad-id.jpg", image_id="has space"),
        Item(JPEG, "fine.jpg"),
    ]
    s = ProducerSettings.model_validate({"kafka": {"max_message_bytes": 1024 * 1024}})
    result, p = run(items, s=s)
    summ = result.summary
    assert [m.value() for m in p.produced] == [JPEG]
    assert summ.delivered == 1 and summ.skipped == 4 and summ.failed == 0
    assert [(x.source, x.reason) for x in summ.skips] == [
        ("notes.jpg", "not-an-image"),
        ("gone.png", "unreadable"),
        ("huge.jpg", "too-large"),
        ("bad-id.jpg", "bad-id"),
    ]
    assert summ.exit_code() == 3
    d = summ.to_dict()
    assert d["skip_reasons"] == {"not-an-image": 1, "unreadable": 1, "too-large": 1, "bad-id": 1}
    json.dumps(d)


def test_size_limit_counts_key_headers_and_overhead() -> None:
    limit = 1024 * 1024
    s = ProducerSettings.model_validate({"kafka": {"max_message_bytes": limit}})
    headers = [("content-type", b"image/jpeg"), ("source", b"x"), ("produced-at", b"1700000000000")]
    key = content_id(b"").encode()
    fits = limit - RECORD_OVERHEAD_BYTES - len(key) - sum(len(k) + len(v) + 4 for k, v in headers)
    assert record_size(key, b"\x00" * fits, headers) == limit
    ok = b"\xff\xd8\xff" + b"\x00" * (fits - 3)
    too_big = ok + b"\x00"
    result, _ = run([Item(ok, "x"), Item(too_big, "x")], s=s)
    assert (result.summary.delivered, result.summary.skipped) == (1, 1)


def test_source_setting_overrides_per_item_source() -> None:
    _, p = run([Item(JPEG, "a.jpg")], s=settings(source="camera-7"))
    assert dict(p.produced[0].headers())["source"] == b"camera-7"


def test_duplicate_content_is_published_and_counted() -> None:
    result, _ = run([Item(JPEG, "a"), Item(JPEG, "copy-of-a")])
    assert result.summary.delivered == 2 and result.summary.duplicate_ids == 1
    assert len({i for i, _ in result.delivered}) == 1


def test_rate_limits_publishing() -> None:
    items = list(synthetic_items(11, (16, 16)))
    t0 = time.monotonic()
    result, _ = run(items, s=settings(rate=50))
    elapsed = time.monotonic() - t0
    assert result.summary.delivered == 11
    assert elapsed >= 10 / 50 * 0.9  # 10 intervals at 50/s
    assert elapsed < 5


def test_stop_request_stops_new_items_but_flushes_sent_ones() -> None:
    sent: list[int] = []

    def items():
        for i, it in enumerate(synthetic_items(100, (16, 16))):
            sent.append(i)
            if i == 5:
                pub_ref["pub"].request_stop()
            yield it

    pub_ref: dict[str, Publisher] = {}
    fake = FakeProducer({})

    class Spy(Publisher):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            pub_ref["pub"] = self

    import producers.publisher as mod

    orig = mod.Publisher
    mod.Publisher = Spy
    try:
        result, _ = run(items(), fake)
    finally:
        mod.Publisher = orig
    assert result.summary.interrupted and result.summary.exit_code() == 130
    assert result.summary.delivered == 5  # items 0-4 published; item 5 pulled after the stop
    assert len(sent) == 6


def test_exception_in_input_still_flushes() -> None:
    fake = FakeProducer({})

    def items():
        yield Item(JPEG, "a")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        run(items(), fake)
    assert fake.queue == [] and len(fake.produced) == 1


def test_publisher_refuses_use_after_close() -> None:
    pub = Publisher(settings(), producer_factory=lambda c: FakeProducer(c))
    with pub:
        pub.publish(Item(JPEG, "a"))
    assert pub.summary.delivered == 1
    with pytest.raises(RuntimeError):
        pub.publish(Item(JPEG, "a"))


def test_real_librdkafka_against_mock_cluster() -> None:
    """No servers: librdkafka's in-process mock brokers, with our real config (acks=all, idempotence)."""
    items = list(synthetic_items(50, (64, 64)))
    result = publish_items(items, settings(), overrides={"test.mock.num.brokers": 3})
    s = result.summary
    assert (s.delivered, s.failed, s.skipped) == (50, 0, 0), s.format_text()
    assert {i for i, _ in result.delivered} == {content_id(it.data) for it in items}
    assert all(r.offset >= 0 and r.partition >= 0 for r in result.records)
    assert s.images_per_s > 0 and s.mb_per_s > 0


def test_close_interrupted_mid_flush_still_accounts_on_retry() -> None:
    class Interrupting(FakeProducer):
        calls = 0

        def flush(self, timeout: float = -1) -> int:
            Interrupting.calls += 1
            if Interrupting.calls == 1:
                raise KeyboardInterrupt  # the second Ctrl-C lands inside the flush
            return super().flush(timeout)

    fake = Interrupting({}, stuck=True)
    result, _ = run([Item(JPEG, "a"), Item(PNG, "b")], fake, settings(flush_timeout_s=0.2))
    s = result.summary
    assert s.interrupted and s.exit_code() == 130
    assert s.failed == 2 and s.delivered == 0  # never silently dropped from the count


def test_progress_plain_lines_and_tty_bar() -> None:
    import io

    from producers.progress import Progress
    from producers.summary import Summary

    out = io.StringIO()
    p = Progress(10, stream=out, interval_s=0.0, tty=False, label="samples")
    s = Summary(topic="t", delivered=3, bytes=2_000_000)
    p.update(4, s)
    p.close(s)
    assert "samples: 4/10 sent, 3 delivered, 0 failed, 0 skipped, 2.0 MB" in out.getvalue()

    out = io.StringIO()
    p = Progress(10, stream=out, tty=True, label="samples")
    p.update(10, s)
    p.close(s)
    assert "10/10" in out.getvalue()
