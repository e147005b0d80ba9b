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
3. Faust's worker stops on SIGTERM and commits only acked offsets: `request_exit`
   uses that to stop with an exit code, and a watchdog thread ends the process if the
   graceful stop itself hangs.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record import default_records, memory_records
from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger(__name__)

CHECKED_AGAINST = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


class IdempotentProducer(faust_aiokafka.Producer):
    """acks=all + enable_idempotence on every producer, not only transactional ones."""

    def _settings_extra(self) -> dict[str, Any]:
        return {"acks": "all", "enable_idempotence": True}


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


class HeaderSafeMemoryRecords(memory_records._MemoryRecordsPy):
    def next_batch(self, *args: Any, **kwargs: Any) -> Any:
        raw = self._next_slice
        batch = super().next_batch(*args, **kwargs)
        if raw is None or batch is None or getattr(batch, "magic", 0) < 2:
            return batch
        return _HeaderSafeBatch(batch, raw)


_installed = False


def install() -> None:
    """Apply the patches above (idempotent; call before the app starts)."""
    global _installed
    if _installed:
        return
    faust_aiokafka.Transport.Producer = IdempotentProducer
    aiokafka_fetcher.MemoryRecords = HeaderSafeMemoryRecords
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
