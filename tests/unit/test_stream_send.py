"""The worker's send step: at-least-once, and a refused record never blocks its batch."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import errors as kafka_errors

from stream_app.app import send_outputs
from stream_app.records import InRecord, OutRecord


def recs(n: int) -> tuple[list[InRecord], list[OutRecord]]:
    ins = [InRecord("in", 0, i, f"k{i}".encode(), b"x" * 10) for i in range(n)]
    outs = [OutRecord("out", r.key, b"payload", []) for r in ins]
    return ins, outs


def bare(rec: InRecord, error: BaseException, topic: str) -> OutRecord:
    assert topic == "out"  # the topic of the output the broker refused
    return OutRecord("dlq", rec.key, b"", [], dead=True, reason="output-too-large")


class FakeBroker:
    """Acks what it accepts; `refuse` keys fail (at send or at ack), `down` fails all."""

    def __init__(self, refuse_at_send=(), refuse_at_ack=(), down=False, hang=False) -> None:
        self.refuse_at_send, self.refuse_at_ack = set(refuse_at_send), set(refuse_at_ack)
        self.down, self.hang = down, hang
        self.acked: list[tuple[str, bytes | None]] = []

    async def send(self, o: OutRecord) -> asyncio.Future:
        if o.topic == "out" and o.key in self.refuse_at_send:
            raise kafka_errors.MessageSizeTooLargeError("too big for max_request_size")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        if self.hang:
            return fut
        if self.down:
            fut.set_exception(kafka_errors.KafkaTimeoutError("no brokers"))
        elif o.topic == "out" and o.key in self.refuse_at_ack:
            fut.set_exception(kafka_errors.MessageSizeTooLargeError("broker: MESSAGE_TOO_LARGE"))
        else:
            self.acked.append((o.topic, o.key))
            fut.set_result(None)
        return fut


def run(coro):
    return asyncio.run(coro)


def test_all_acked_leaves_outputs_as_they_are() -> None:
    ins, outs = recs(3)
    broker = FakeBroker()
    run(send_outputs(broker.send, ins, outs, bare, 5))
    assert broker.acked == [("out", b"k0"), ("out", b"k1"), ("out", b"k2")]


@pytest.mark.parametrize("where", ["send", "ack"])
def test_a_refused_record_becomes_its_bare_dead_letter_and_the_rest_go_through(where) -> None:
    ins, outs = recs(3)
    broker = FakeBroker(**{f"refuse_at_{where}": [b"k1"]})
    run(send_outputs(broker.send, ins, outs, bare, 5))
    assert outs[1].dead and outs[1].topic == "dlq"
    assert sorted(broker.acked) == [("dlq", b"k1"), ("out", b"k0"), ("out", b"k2")]


def test_an_unreachable_cluster_raises_so_nothing_is_acked() -> None:
    ins, outs = recs(2)
    with pytest.raises(kafka_errors.KafkaTimeoutError):
        run(send_outputs(FakeBroker(down=True).send, ins, outs, bare, 5))


def test_acks_that_never_come_raise_after_the_timeout() -> None:
    ins, outs = recs(2)
    with pytest.raises(asyncio.TimeoutError):
        run(send_outputs(FakeBroker(hang=True).send, ins, outs, bare, 0.05))
