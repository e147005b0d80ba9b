"""Fresh consumer lag of a worker's partitions: from the group's committed offset to the
log end offset asked of the partition leader now.

Faust only knows the high-water mark of its last fetch, which stands still when fetching
does (the very case a lag figure must reveal), and its committed offsets are private.
A plain confluent-kafka consumer that never subscribes (so it never joins the group)
asks the broker both facts directly. Blocking: run it in an executor.
"""

from __future__ import annotations

import logging
from typing import Any

from infra.kafka_clients import consumer_config
from infra.settings import KafkaSettings

log = logging.getLogger(__name__)

TP = tuple[str, int]


class LagProbe:
    def __init__(self, kafka: KafkaSettings, group_id: str, timeout_s: float = 5.0) -> None:
        from confluent_kafka import Consumer

        conf = consumer_config(
            kafka,
            group_id,
            {"enable.auto.commit": False, "client.id": f"{group_id}-lag-probe"},
        )
        self._consumer: Any = Consumer(conf)
        self._timeout = timeout_s

    def measure(self, tps: list[TP]) -> dict[TP, tuple[int, int] | None]:
        """(committed offset, log end offset) per partition; None where the broker did
        not answer in time. With nothing committed yet, the log start counts."""
        from confluent_kafka import KafkaException, TopicPartition

        if not tps:
            return {}
        out: dict[TP, tuple[int, int] | None] = dict.fromkeys(tps)
        try:
            committed = self._consumer.committed(
                [TopicPartition(t, p) for t, p in tps], timeout=self._timeout
            )
        except KafkaException as exc:
            log.info("lag probe: committed offsets unavailable: %s", exc)
            return out
        for tp in committed:
            try:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=self._timeout, cached=False
                )
            except KafkaException as exc:
                log.info("lag probe: end of %s[%d] unavailable: %s", tp.topic, tp.partition, exc)
                continue
            start = tp.offset if tp.offset >= 0 else low  # nothing committed yet: earliest
            out[(tp.topic, tp.partition)] = (start, high)
        return out

    def close(self) -> None:
        self._consumer.close()
