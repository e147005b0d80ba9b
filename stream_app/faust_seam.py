"""Every place the stream app reaches into Faust or aiokafka internals, in one file.

Checked against faust-streaming 0.15.3 and aiokafka 0.14.0 (a test pins both and
exercises each patch). The internals relied on:

1. `faust.transport.drivers.aiokafka.Transport.Producer` and its `_settings_extra()`:
   faust enables idempotence only inside transactions; we want acks=all with
   idempotence always, so producer retries never duplicate or reorder.
2. `aiokafka.consumer.fetcher.MemoryRecords`, the class the fetcher parses fetched
   record batches with. aiokafka decodes header *names* as strict UTF-8 while parsing,
   so one record with a non-UTF-8 header name (any Kafka client can send one) raises
   in the fetcher on every fetch, and its partition never moves again. Batches are
   parsed by aiokafka's own fast parser first; only a batch it cannot parse is parsed
   again by its pure-Python parser with header names decoded losslessly
   (`surrogateescape`). The stage then refuses that record as data (bad-header).
   The same parser bounds decompression: a compressed batch passes the broker's size
   check by its compressed size, and aiokafka inflates it whole in memory (a 600 MiB
   zstd bomb took a worker to 1.9 GiB). A batch is first inflated into a buffer of
   MAX_BATCH_BYTES; one that does not fit is not handed out as it is: each of its
   offsets comes out as a marker record (`refused_batch_reason`), which the stage
   turns into a dead letter, so every record is still accounted for.
3. `AIOKafkaConsumerThread.seek_to_committed`, which Faust calls after every rebalance
   and whenever it drops fetched records because flow is stopped (a rebalance under
   way). aiokafka's `seek_to_committed` moves only partitions whose committed offset
   is above 0, so a partition nobody has committed yet (a worker SIGKILLed before its
   first commit) stays *after* the records Faust just dropped: they were never handed
   to a stage, and the survivor stalled behind them until the watchdog restarted it.
   Such partitions are reset the way the consumer resets them anyway
   (`consumer_auto_offset_reset`, earliest here).
4. Faust's worker stops on SIGTERM and commits only acked offsets: `request_exit`
   uses that to stop with an exit code, and a watchdog thread ends the process if the
   graceful stop itself hangs.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import threading
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cramjam
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record import default_records, memory_records
from faust.transport.drivers import aiokafka as faust_aiokafka

from infra.kafka_clients import DURABILITY_AIOKAFKA

log = logging.getLogger(__name__)

CHECKED_AGAINST = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


class IdempotentProducer(faust_aiokafka.Producer):
    """acks=all + enable_idempotence on every producer, not only transactional ones."""

    def _settings_extra(self) -> dict[str, Any]:
        return dict(DURABILITY_AIOKAFKA)


class _LenientSlice(bytes):
    """A slice whose `decode()` keeps undecodable bytes as surrogates (lossless)."""

    def decode(self, encoding: str = "utf-8", errors: str = "surrogateescape") -> str:
        return bytes.decode(self, encoding, "surrogateescape")


class _LenientBuffer(bytearray):
    def __getitem__(self, index: Any) -> Any:
        item = bytearray.__getitem__(self, index)
        return _LenientSlice(item) if isinstance(index, slice) else item


class _LenientBatch(default_records._DefaultRecordBatchPy):
    """aiokafka's pure-Python batch parser, with header names decoded losslessly."""

    def _read_msg(self, *args: Any, **kwargs: Any) -> Any:
        buffer: bytearray = self._buffer  # type: ignore[has-type]
        if not isinstance(buffer, _LenientBuffer):
            self._buffer = _LenientBuffer(buffer)
        return super()._read_msg(*args, **kwargs)


class _HeaderSafeBatch:
    """A record batch that falls back to the lenient parser when the fast one fails on
    a header name. Records are parsed before the first is handed out, so a fallback
    never repeats or skips one."""

    def __init__(self, fast: Any, raw: memoryview) -> None:
        self._fast = fast
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fast, name)

    def __iter__(self) -> Iterator[Any]:
        try:
            records = list(self._fast)
        except UnicodeDecodeError as exc:
            log.warning(
                "record batch at offset %d has a header name that is not UTF-8 (%s); "
                "parsing it losslessly so the stage can refuse that record",
                self._fast.base_offset,
                exc,
            )
            records = list(_LenientBatch(self._raw))
        return iter(records)

    def __next__(self) -> Any:  # control-record checks call next() on the batch
        return next(self._fast)


# The most a fetched batch may inflate to. A record's value is refused above the raw
# topic's 10 MiB anyway; this leaves room for a batch of several such records while
# keeping a worker far below its memory bound.
MAX_BATCH_BYTES = 64 * 1024 * 1024
_BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")  # record batch v2, 61 bytes
_REFUSED_MARK = "\x00torchstream-refused-batch"  # never on the wire: set below only


@dataclass(frozen=True)
class _MarkerRecord:
    """Stands for one record of a batch that was not inflated (see module doc)."""

    offset: int
    timestamp: int
    reason: bytes
    timestamp_type: int = 0
    key: bytes | None = None
    value: bytes | None = None
    checksum: None = None

    @property
    def headers(self) -> list[tuple[Any, bytes]]:
        return [(_MARKER, self.reason)]


class _Marker(str):
    """A header name no fetched record can carry: an instance of this class."""


_MARKER = _Marker(_REFUSED_MARK)


def refused_batch_reason(headers: Any) -> str | None:
    """The reason a record stands for an uninflated batch, or None for a real record."""
    for name, value in headers or ():
        if isinstance(name, _Marker):
            return bytes(value).decode()
    return None


_buffers = threading.local()


def _inflate_buffer(size: int) -> bytearray:
    """One scratch buffer per thread, reused: allocating (and zeroing) 64 MiB for every
    compressed batch cost ~30 ms on the fetch path, and our producers compress with lz4."""
    buf: bytearray | None = getattr(_buffers, "buf", None)
    if buf is None or len(buf) != size:
        buf = _buffers.buf = bytearray(size)
    return buf


def inflated_size(codec: int, payload: memoryview, limit: int) -> int | None:
    """Bytes `payload` inflates to, or None when that exceeds `limit` (memory bounded)."""
    if codec == 1:  # gzip: stream, counting
        d = zlib.decompressobj(wbits=47)
        total, data = 0, bytes(payload)
        while data and total <= limit:
            total += len(d.decompress(data, 1 << 20))
            data = d.unconsumed_tail
        return total if total <= limit else None
    if codec == 2:  # snappy, xerial-framed or raw: sizes are in the block headers
        blocks: list[bytes] = []
        data = bytes(payload)
        if data[:8] == b"\x82SNAPPY\x00":
            pos = 16
            while pos + 4 <= len(data):
                (n,) = struct.unpack_from(">i", data, pos)
                blocks.append(data[pos + 4 : pos + 4 + n])
                pos += 4 + n
        else:
            blocks.append(data)
        total = sum(int(cramjam.snappy.decompress_raw_len(b)) for b in blocks)
        return total if total <= limit else None
    module = {3: cramjam.lz4, 4: cramjam.zstd}.get(codec)
    if module is None:
        return len(payload)
    buf = _inflate_buffer(limit)
    try:
        return int(module.decompress_into(bytes(payload), buf))
    except cramjam.DecompressionError as exc:
        if "whole buffer" in str(exc):
            return None
        raise


class _RefusedBatch:
    """A batch handed out as marker records only (too large inflated, or unreadable)."""

    def __init__(self, fast: Any, header: tuple[Any, ...], reason: str) -> None:
        self._fast = fast
        self._base, self._last_delta, self._ts = header[0], header[6], header[7]
        self._reason = reason.encode()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fast, name)

    def __iter__(self) -> Iterator[_MarkerRecord]:
        for delta in range(self._last_delta + 1):
            yield _MarkerRecord(self._base + delta, self._ts, self._reason)


class HeaderSafeMemoryRecords(memory_records._MemoryRecordsPy):
    def next_batch(self, *args: Any, **kwargs: Any) -> Any:
        raw = self._next_slice
        batch = super().next_batch(*args, **kwargs)
        if raw is None or batch is None or getattr(batch, "magic", 0) < 2:
            return batch
        header = _BATCH_HEADER.unpack_from(raw)
        codec = header[5] & 0x07
        if codec and not header[5] & 0x20:  # compressed, not a control batch
            try:
                size = inflated_size(codec, raw[_BATCH_HEADER.size :], MAX_BATCH_BYTES)
            except Exception as exc:  # a corrupt stream: its records are refused as data
                log.warning("batch at offset %d does not decompress: %s", header[0], exc)
                return _RefusedBatch(batch, header, "batch-corrupt")
            if size is None:
                log.warning(
                    "batch at offsets %d..%d inflates past %d bytes; refusing its records",
                    header[0],
                    header[0] + header[6],
                    MAX_BATCH_BYTES,
                )
                return _RefusedBatch(batch, header, "decompressed-too-large")
        return _HeaderSafeBatch(batch, raw)


async def seek_to_committed_or_reset(consumer: Any, reset: str) -> Mapping[Any, int | None]:
    """Seek every assigned partition of an aiokafka consumer to its committed offset, and
    one without a committed offset (or at 0) to where `reset` (earliest/latest) puts it.
    Returns aiokafka's committed offsets, as Faust expects."""
    committed: Mapping[Any, int | None] = await consumer.seek_to_committed()
    unmoved = [tp for tp, offset in committed.items() if offset is None or offset <= 0]
    if unmoved:
        if reset == "latest":
            await consumer.seek_to_end(*unmoved)
        else:
            await consumer.seek_to_beginning(*unmoved)
    return committed


async def _thread_seek_to_committed(self: Any) -> Mapping[Any, int | None]:
    reset = self.app.conf.consumer_auto_offset_reset
    committed: Mapping[Any, int | None] = await self.call_thread(
        seek_to_committed_or_reset, self._ensure_consumer(), reset
    )
    return committed


_installed = False


def install() -> None:
    """Apply the patches above (idempotent; call before the app starts)."""
    global _installed
    if _installed:
        return
    faust_aiokafka.Transport.Producer = IdempotentProducer
    aiokafka_fetcher.MemoryRecords = HeaderSafeMemoryRecords
    faust_aiokafka.AIOKafkaConsumerThread.seek_to_committed = _thread_seek_to_committed  # type: ignore[method-assign,assignment]
    _installed = True


def request_exit(code_holder: Any, code: int, grace_s: float) -> None:
    """Stop this worker gracefully with exit `code` (set on `code_holder.exit_code`).

    Faust's stop commits only acked offsets, so unacked input is redelivered to the
    partition's next owner. If the stop has not ended the process after `grace_s`
    (a stop can hang on a stuck agent), the process ends hard with the same code:
    nothing unacked was committed, so nothing is lost.
    """
    if code_holder.exit_code:
        return
    code_holder.exit_code = code

    def hard_exit() -> None:
        log.critical("graceful stop did not finish in %.0fs; exiting with %d", grace_s, code)
        logging.shutdown()
        os._exit(code)

    timer = threading.Timer(grace_s, hard_exit)
    timer.daemon = True
    timer.start()
    os.kill(os.getpid(), signal.SIGTERM)
