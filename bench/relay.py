"""Identity relay: the transport benchmark's stand-in for a stream stage.

  python -m bench.relay --source T1 --sink T2 --group G [--batch 1000]

Consumes `source`, produces every record unchanged (key, value, headers) to `sink`,
and stores the consumed offsets only after the batch is acknowledged by the brokers
(acks=all, idempotent producer: the pipeline's defaults from infra.kafka_clients), so
delivery is at-least-once like a real stage. The model work is zero: what remains is
the cost of moving events. Stops on SIGTERM after finishing its batch.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from typing import Any

from infra.kafka_clients import consumer_config, producer_config
from infra.logs import configure
from infra.settings import PipelineSettings

log = logging.getLogger("bench.relay")


def relay(
    settings: PipelineSettings,
    source: str,
    sink: str,
    group: str,
    stop: threading.Event,
    batch: int = 1000,
    producer_overrides: dict[str, Any] | None = None,
) -> int:
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    consumer = Consumer(
        consumer_config(settings.kafka, group, {"client.id": f"bench-relay-{group}"})
    )
    producer = Producer(
        producer_config(
            settings.kafka, {"client.id": f"bench-relay-{group}", **(producer_overrides or {})}
        )
    )
    consumer.subscribe([source])
    moved = 0
    failed: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    try:
        while not stop.is_set():
            msgs = consumer.consume(batch, 0.2)
            if not msgs:
                continue
            last: dict[tuple[str, int], int] = {}
            for m in msgs:
                if m.error() is not None:
                    log.warning("consume error: %s", m.error())
                    continue
                while True:
                    try:
                        producer.produce(
                            sink,
                            value=m.value(),
                            key=m.key(),
                            headers=m.headers(),
                            on_delivery=on_delivery,
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
                last[(str(m.topic()), int(m.partition() or 0))] = int(m.offset() or 0)
            producer.poll(0)
            # Side effect first, offset second: the whole batch acknowledged, then store.
            while producer.flush(1.0) > 0 and not stop.is_set():
                pass
            if failed:
                raise KafkaException(failed[0])
            consumer.store_offsets(
                offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
            )
            moved += len(msgs)
    finally:
        producer.flush(10.0)
        consumer.close()  # commits the stored offsets
    return moved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__)
    ap.add_argument("--source", required=True)
    ap.add_argument("--sink", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--linger-ms", type=int, default=None)
    args = ap.parse_args(argv)
    settings = PipelineSettings()
    configure(settings.log_level)
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    overrides = {"linger.ms": args.linger_ms} if args.linger_ms is not None else None
    t0 = time.monotonic()
    n = relay(settings, args.source, args.sink, args.group, stop, args.batch, overrides)
    log.info(
        "relay %s -> %s moved %d records in %.0fs", args.source, args.sink, n, time.monotonic() - t0
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
