"""The Faust/aiokafka seam: the versions it was checked against, and each patch."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from stream_app import faust_seam


def batch_bytes(records: list[tuple[bytes, list[tuple[str, bytes]]]], codec: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=0, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20,
    )  # fmt: skip
    for offset, (key, headers) in enumerate(records):
        builder.append(offset, timestamp=1, key=key, value=b"v", headers=headers)
    return bytes(builder.build())


def corrupt_header_name(data: bytes) -> bytes:
    # Same length, so the batch stays well-formed; only the name is no longer UTF-8.
    assert data.count(b"n@me") == 1
    return data.replace(b"n@me", b"n\xffme")


def test_checked_versions_are_the_installed_ones() -> None:
    assert version("faust-streaming") == faust_seam.CHECKED_AGAINST["faust-streaming"]
    assert version("aiokafka") == faust_seam.CHECKED_AGAINST["aiokafka"]


def test_aiokafka_alone_cannot_parse_a_non_utf8_header_name() -> None:
    data = corrupt_header_name(batch_bytes([(b"a", [("ok", b"1")]), (b"b", [("n@me", b"2")])]))
    batch = MemoryRecords(data).next_batch()
    with pytest.raises(UnicodeDecodeError):
        list(batch)


@pytest.mark.parametrize("codec", [0, 3])  # none, lz4
def test_header_safe_records_keep_every_record_and_the_name_losslessly(codec: int) -> None:
    records = [(b"a", [("ok", b"1")]), (b"b", [("n@me", b"2")]), (b"c", [])]
    data = batch_bytes(records, codec)
    if codec == 0:
        data = corrupt_header_name(data)
    mr = faust_seam.HeaderSafeMemoryRecords(data)
    batch = mr.next_batch()
    got = [(r.offset, r.key, list(r.headers)) for r in batch]
    assert [k for _, k, _ in got] == [b"a", b"b", b"c"]
    name = got[1][2][0][0]
    if codec == 0:
        assert name == "n\udcffme" and name.encode("utf-8", "surrogateescape") == b"n\xffme"
    assert batch.next_offset == 3 and not mr.has_next()


def test_install_patches_the_fetcher_and_the_producer() -> None:
    from aiokafka.consumer import fetcher
    from faust.transport.drivers import aiokafka as drv

    faust_seam.install()
    assert fetcher.MemoryRecords is faust_seam.HeaderSafeMemoryRecords
    assert drv.Transport.Producer is faust_seam.IdempotentProducer
    assert drv.AIOKafkaConsumerThread.seek_to_committed is faust_seam._thread_seek_to_committed


@pytest.mark.parametrize("codec", [1, 2, 3, 4])  # gzip, snappy, lz4, zstd
def test_a_batch_that_inflates_past_the_bound_becomes_marker_records(
    codec: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faust_seam, "MAX_BATCH_BYTES", 1 << 20)
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=0, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 26,
    )  # fmt: skip
    for offset in range(3):
        builder.append(offset, timestamp=5, key=b"k", value=b"\0" * (4 << 20), headers=[])
    data = bytes(builder.build())
    assert len(data) < (1 << 20)  # small on the wire
    batch = faust_seam.HeaderSafeMemoryRecords(data).next_batch()
    records = list(batch)
    assert [r.offset for r in records] == [0, 1, 2]
    assert {faust_seam.refused_batch_reason(r.headers) for r in records} == {
        "decompressed-too-large"
    }
    assert all(r.key is None and r.value is None for r in records)


def test_a_compressed_batch_within_the_bound_is_handed_over_as_it_is() -> None:
    data = batch_bytes([(b"a", [("h", b"1")]), (b"b", [])], codec=4)
    records = list(faust_seam.HeaderSafeMemoryRecords(data).next_batch())
    assert [r.key for r in records] == [b"a", b"b"]
    assert all(faust_seam.refused_batch_reason(r.headers) is None for r in records)
