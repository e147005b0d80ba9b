"""Thumbnails of stored images, read back from `images.raw` by the prediction's lineage.

A prediction keeps raw_topic/raw_partition/raw_offset. While that offset is inside the
partition's retention, one record is read from there (a group-less consumer, assigned to
that offset, committing nothing), checked to carry the image's key, and scaled down to
a JPEG. Outside retention, or when the record there is another image, the answer is None
(the page shows a placeholder). Results are kept in a small LRU. Blocking: run in a thread.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections import OrderedDict
from typing import Any

from infra.kafka_clients import consumer_config
from infra.settings import KafkaSettings

FETCH_TIMEOUT_S = 5.0
# The decode stage refuses images above its pixel limit; refuse the same here, so a
# thumbnail can never be a decompression bomb.
MAX_PIXELS = 40_000_000


class NotInRetention(LookupError):
    """The raw record is gone (retention) or is no longer this image."""


def scale(data: bytes, px: int) -> bytes:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        im.draft("RGB", (px, px))  # JPEG: decode at a reduced scale, much cheaper
        small = im.convert("RGB")
        small.thumbnail((px, px))
        out = io.BytesIO()
        small.save(out, "JPEG", quality=80)
        return out.getvalue()


def read_raw(kafka: KafkaSettings, topic: str, partition: int, offset: int, image_id: str) -> bytes:
    from confluent_kafka import Consumer, TopicPartition

    conf = consumer_config(
        kafka,
        f"api-thumbnail-{uuid.uuid4().hex[:8]}",
        {
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        },
    )
    consumer = Consumer(conf)
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=FETCH_TIMEOUT_S
        )
        if not low <= offset < high:
            raise NotInRetention(f"{topic}/{partition}@{offset} outside [{low}, {high})")
        consumer.assign([TopicPartition(topic, partition, offset)])
        msg = consumer.poll(FETCH_TIMEOUT_S)
        if msg is None or msg.error() is not None or msg.offset() != offset:
            raise NotInRetention(f"{topic}/{partition}@{offset} could not be read")
        key = msg.key()
        if key is None or key.decode("utf-8", "replace") != image_id:
            raise NotInRetention(f"{topic}/{partition}@{offset} holds another image")
        value = msg.value()
        if value is None:
            raise NotInRetention(f"{topic}/{partition}@{offset} has no value")
        return bytes(value)
    finally:
        consumer.close()


class Thumbnails:
    def __init__(self, kafka: KafkaSettings, px: int, cache_size: int) -> None:
        self._kafka = kafka
        self._px = px
        self._size = cache_size
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, prediction: dict[str, Any]) -> bytes:
        """A JPEG thumbnail; NotInRetention when the raw record is gone or unreadable."""
        image_id = prediction["image_id"]
        with self._lock:
            if image_id in self._cache:
                self._cache.move_to_end(image_id)
                return self._cache[image_id]
        topic, part, off = (
            prediction.get("raw_topic"),
            prediction.get("raw_partition"),
            prediction.get("raw_offset"),
        )
        if topic is None or part is None or off is None:
            raise NotInRetention("the prediction has no raw lineage")
        raw = read_raw(self._kafka, topic, int(part), int(off), image_id)
        try:
            jpeg = scale(raw, self._px)
        except Exception as exc:  # Pillow raises many types for odd files
            raise NotInRetention(f"cannot make a thumbnail: {type(exc).__name__}") from None
        with self._lock:
            self._cache[image_id] = jpeg
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return jpeg
