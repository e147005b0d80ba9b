import re

import pytest

from consumers.records import (
    DELETE_PREDICTION,
    DELETE_REJECTION,
    NO_TIMESTAMP_US,
    PREDICTION,
    PREDICTION_BY_LABEL,
    REJECTION,
    KafkaRecord,
    UnknownSchemaVersion,
    fallback_writes,
    map_record,
    sink_dead_letter,
    write_failed_request,
)
from consumers.statements import write_statements
from schemas import codec, dead_letter, rows, topics

KAFKA_TS = 1_700_000_000_123


def prediction(image_id="img-1", processed_at_ms=1_700_000_005_000, **over):
    rec = {
        "image_id": image_id,
        "source": "unit",
        "content_type": "image/jpeg",
        "produced_at_ms": 1_700_000_000_000,
        "raw_topic": topics.RAW,
        "raw_partition": 2,
        "raw_offset": 41,
        "model_name": "efficientnet_lite0",
        "model_version": "1",
        "top_k": [
            {"class_index": 207, "label": "golden retriever", "score": 0.875},
            {"class_index": 208, "label": "Labrador retriever", "score": 0.0625},
        ],
        "processed_at_ms": processed_at_ms,
        "trace": {"decode": 1_700_000_001_000, "infer": 1_700_000_003_000},
    }
    rec.update(over)
    return rec


def kafka(topic, value, headers, key=b"img-1", offset=9, partition=3, ts=KAFKA_TS):
    return KafkaRecord(topic, partition, offset, key, value, headers, ts)


def test_prediction_maps_to_both_tables_with_processed_at_as_write_time():
    value, headers = codec.encode("Prediction", prediction())
    m = map_record(kafka(topics.PREDICTIONS, value, headers))
    assert m.kind == "prediction" and m.image_id == "img-1" and m.dead_letter is None
    main, by_label, drop = m.writes
    assert main.statement == PREDICTION and by_label.statement == PREDICTION_BY_LABEL
    assert main.timestamp_us == by_label.timestamp_us == 1_700_000_005_000 * 1000
    # One status per image: the same request deletes its rejection at its own time.
    assert (drop.statement, drop.params, drop.timestamp_us) == (
        DELETE_REJECTION,
        ("img-1",),
        main.timestamp_us,
    )
    p = main.row
    assert (p.image_id, p.label, p.class_index, p.score) == (
        "img-1",
        "golden retriever",
        207,
        0.875,
    )
    assert p.top_k == [(207, "golden retriever", 0.875), (208, "Labrador retriever", 0.0625)]
    assert (p.raw_topic, p.raw_partition, p.raw_offset) == (topics.RAW, 2, 41)
    assert p.produced_at == 1_700_000_000_000 and p.processed_at == 1_700_000_005_000
    assert p.stage_ms == {"decode": 1_700_000_001_000, "infer": 1_700_000_003_000}
    assert main.params == rows.bound_values(p)
    b = by_label.row
    assert (b.label, b.image_id, b.score) == ("golden retriever", "img-1", 0.875)


def test_newer_record_gets_a_larger_timestamp():
    old = map_record(
        kafka(topics.PREDICTIONS, *codec.encode("Prediction", prediction(processed_at_ms=1000)))
    )
    new = map_record(
        kafka(topics.PREDICTIONS, *codec.encode("Prediction", prediction(processed_at_ms=2000)))
    )
    assert old.writes[0].timestamp_us == 1_000_000 < new.writes[0].timestamp_us == 2_000_000


def test_prediction_v1_without_trace_still_maps():
    v1 = prediction()
    del v1["trace"]
    value, headers = codec.encode("Prediction", v1, version=1)
    m = map_record(kafka(topics.PREDICTIONS, value, headers))
    assert m.kind == "prediction" and m.writes[0].row.stage_ms == {}


def test_dead_letter_maps_to_a_rejection_with_failed_at_as_write_time():
    value, headers = dead_letter.dead_letter(
        image_id="img-2",
        stage="decode",
        reason="truncated",
        error=ValueError("bad jpeg"),
        origin_topic=topics.RAW,
        origin_partition=1,
        origin_offset=17,
        payload=b"\xff\xd8",
        source="cam",
        produced_at_ms=1_600_000_000_000,
    )
    failed_at = dead_letter.read_dead_letter(value, headers)["failed_at_ms"]
    m = map_record(kafka(topics.DECODE_DLQ, value, headers, key=b"img-2"))
    assert m.kind == "rejection" and m.dead_letter is None
    w, drop = m.writes
    assert w.statement == REJECTION and w.timestamp_us == failed_at * 1000
    assert w.row == rows.RejectionRow(
        image_id="img-2",
        stage="decode",
        reason="truncated",
        error_class="ValueError",
        message="bad jpeg",
        retriable=False,
        source="cam",
        origin_topic=topics.RAW,
        origin_partition=1,
        origin_offset=17,
        produced_at=1_600_000_000_000,
        rejected_at=failed_at,
        raw_key=None,
    )
    # ... and deletes the prediction 1 us before it (a tie goes to the prediction).
    assert (drop.statement, drop.params, drop.timestamp_us) == (
        DELETE_PREDICTION,
        ("img-2",),
        failed_at * 1000 - 1,
    )


def test_undecodable_prediction_with_a_key_becomes_a_rejection_and_a_dead_letter():
    _, headers = codec.encode("Prediction", prediction())
    rec = kafka(topics.PREDICTIONS, b"\x01garbage", headers, key=b"img-3")
    m = map_record(rec)
    assert m.kind == "refused" and m.image_id == "img-3"
    w, drop = m.writes
    assert drop.statement == DELETE_PREDICTION and drop.timestamp_us == w.timestamp_us - 1
    assert w.statement == REJECTION and w.timestamp_us == KAFKA_TS * 1000  # fixed: replay-safe
    assert (w.row.image_id, w.row.stage, w.row.reason) == ("img-3", "sink", "undecodable")
    assert (w.row.origin_topic, w.row.origin_partition, w.row.origin_offset) == (
        topics.PREDICTIONS,
        3,
        9,
    )
    assert m.dead_letter is not None and m.dead_letter.reason == "undecodable"
    # The sink's dead letter keeps the original payload and where it came from.
    value, dl_headers = sink_dead_letter(rec, m.dead_letter)
    dl = dead_letter.read_dead_letter(value, dl_headers)
    assert dl["payload"] == b"\x01garbage" and dl["stage"] == "sink"
    assert (dl["origin_topic"], dl["origin_partition"], dl["origin_offset"]) == (
        topics.PREDICTIONS,
        3,
        9,
    )
    assert dl["image_id"] == "img-3"


def test_wrong_schema_header_is_refused_with_its_reason():
    value, headers = codec.encode("Prediction", prediction())
    bad_headers = [(k, v) for k, v in headers if k != codec.H_SCHEMA_NAME]
    m = map_record(kafka(topics.PREDICTIONS, value, bad_headers))
    assert m.kind == "refused" and m.dead_letter.reason == "wrong-schema"
    assert m.writes[0].row.reason == "wrong-schema" and m.writes[0].row.image_id == "img-1"


def test_undecodable_record_without_a_key_still_gets_one_row_under_its_origin():
    m = map_record(kafka(topics.PREDICTIONS, b"junk", [], key=None))
    assert m.kind == "refused" and m.image_id == f"no-key:{topics.PREDICTIONS}/3/9"
    assert m.writes[0].statement == REJECTION and m.writes[0].row.image_id == m.image_id
    assert m.dead_letter is not None and m.dead_letter.image_id == m.image_id
    # Replayed: the same row.
    assert map_record(kafka(topics.PREDICTIONS, b"junk", [], key=None)).writes == m.writes


@pytest.mark.parametrize(
    "key, raw",
    [
        (b"\xff\xfe-not-utf8", "\\xff\\xfe-not-utf8"),
        (b"has space", "has space"),
        (b"x" * 300, None),  # too long: kept cut, with its length
    ],
)
def test_a_key_that_is_no_valid_id_gets_a_hashed_row_id_and_keeps_its_raw_form(key, raw):
    m = map_record(kafka(topics.DECODE_DLQ, b"not avro", [], key=key))
    w = m.writes[0].row
    assert w.image_id.startswith("key-sha256:") and len(w.image_id) == len("key-sha256:") + 64
    assert w.raw_key == raw if raw is not None else w.raw_key.endswith("(300 bytes)")
    assert m.dead_letter.image_id == w.image_id


def test_different_bad_keys_never_share_a_row():
    # A lossy decode would map both to "\ufffd"; the safe id keeps them apart.
    ids = {
        map_record(kafka(topics.PREDICTIONS, b"junk", [], key=k)).image_id
        for k in (b"\xff", b"\xfe", b"\xff\xfe")
    }
    assert len(ids) == 3


def test_keyless_undecodable_dead_letter_uses_the_origin_its_stage_named():
    headers = [
        ("origin-topic", topics.RAW.encode()),
        ("origin-partition", b"4"),
        ("origin-offset", b"77"),
        ("stage", b"decode"),
        ("error-reason", b"bad-key"),
    ]
    m = map_record(kafka(topics.DECODE_DLQ, b"not avro", headers, key=None))
    assert m.image_id == f"no-key:{topics.RAW}/4/77"
    assert (m.writes[0].row.stage, m.writes[0].row.reason) == ("decode", "bad-key")
    garbage = [("origin-topic", b"t"), ("origin-partition", b"x"), ("origin-offset", b"1")]
    m2 = map_record(kafka(topics.DECODE_DLQ, b"not avro", garbage, key=None))
    assert m2.image_id == f"no-key:{topics.DECODE_DLQ}/3/9"


def test_dead_letter_with_an_invalid_image_id_is_stored_under_a_safe_id():
    value, headers = dead_letter.dead_letter(
        image_id="bad id " * 50,
        stage="decode",
        reason="r",
        origin_topic=topics.RAW,
        origin_partition=0,
        origin_offset=1,
        payload=b"",
    )
    m = map_record(kafka(topics.DECODE_DLQ, value, headers, key=None))
    assert m.kind == "rejection" and m.image_id.startswith("key-sha256:")


def test_prediction_without_an_image_id_uses_its_key_or_the_safe_id():
    value, headers = codec.encode("Prediction", prediction(image_id=""))
    assert map_record(kafka(topics.PREDICTIONS, value, headers, key=b"img-9")).image_id == "img-9"
    m = map_record(kafka(topics.PREDICTIONS, value, headers, key=b"\x00"))
    assert m.kind == "prediction" and m.image_id.startswith("key-sha256:")


def test_a_newer_schema_version_stops_instead_of_rejecting():
    value, headers = codec.encode("Prediction", prediction())
    newer = str(max(codec.versions("Prediction")) + 1).encode()
    h = [(k, newer if k == codec.H_SCHEMA_VERSION else v) for k, v in headers]
    with pytest.raises(UnknownSchemaVersion, match="upgrade the sink"):
        map_record(kafka(topics.PREDICTIONS, value, h))
    dl_value, dl_headers = dead_letter.dead_letter(
        image_id="x",
        stage="infer",
        reason="r",
        origin_topic="t",
        origin_partition=0,
        origin_offset=0,
        payload=b"",
    )
    newer_dl = str(max(codec.versions("DeadLetter")) + 1).encode()
    dl_h = [(k, newer_dl if k == codec.H_SCHEMA_VERSION else v) for k, v in dl_headers]
    with pytest.raises(UnknownSchemaVersion):
        map_record(kafka(topics.INFER_DLQ, dl_value, dl_h))


def test_an_unknown_version_that_no_upgrade_can_produce_is_bad_data():
    value, headers = codec.encode("Prediction", prediction())
    h = [(k, b"0" if k == codec.H_SCHEMA_VERSION else v) for k, v in headers]
    m = map_record(kafka(topics.PREDICTIONS, value, h))
    assert m.kind == "refused" and m.dead_letter.reason == "unknown-schema-version"


def test_out_of_range_times_are_refused_and_a_record_without_any_time_is_still_a_row():
    value, headers = codec.encode("Prediction", prediction(processed_at_ms=2**62))
    m = map_record(kafka(topics.PREDICTIONS, value, headers))
    assert m.kind == "refused" and m.dead_letter.reason == "bad-timestamp"
    assert m.writes[0].timestamp_us == KAFKA_TS * 1000
    value, headers = codec.encode("Prediction", prediction(processed_at_ms=0))
    m = map_record(kafka(topics.PREDICTIONS, value, headers, ts=0))
    assert m.kind == "refused" and m.dead_letter.reason == "no-timestamp"
    assert m.writes[0].timestamp_us == NO_TIMESTAMP_US and m.writes[1].timestamp_us == 0


def test_fallback_row_is_small_whatever_the_record_held():
    value, headers = codec.encode("Prediction", prediction())
    rec = kafka(
        topics.PREDICTIONS,
        value,
        headers + [("source", ("s" * 100_000).encode())],
        key=b"\xff" * 5000,
    )
    m = map_record(rec)
    w, drop = fallback_writes(m, rec, RuntimeError("x" * 100_000))
    assert w.statement == REJECTION and drop.statement == DELETE_PREDICTION
    assert w.row.image_id == m.image_id and (w.row.stage, w.row.reason, w.row.error_class) == (
        "sink",
        "cassandra-refused",
        "RuntimeError",
    )
    assert sum(len(v) for v in w.params if isinstance(v, str)) < 3000
    assert w.timestamp_us == KAFKA_TS * 1000


def test_too_large_dead_letter_is_cut_with_the_original_size_in_a_header():
    rec = kafka(topics.PREDICTIONS, b"v" * 100_000, [("h", b"x" * 1000)])
    m = map_record(rec)
    value, headers = sink_dead_letter(rec, m.dead_letter, payload_limit=1000)
    dl = dead_letter.read_dead_letter(value, headers)
    assert dl["payload"] == b"v" * 1000 and dl["payload_headers"] == {}
    assert ("payload-original-bytes", b"100000") in headers


def test_prediction_without_classes_is_refused():
    value, headers = codec.encode("Prediction", prediction(top_k=[]))
    m = map_record(kafka(topics.PREDICTIONS, value, headers))
    assert m.kind == "refused" and m.dead_letter.reason == "empty-top-k"
    assert (r := m.writes[0].row).image_id == "img-1" and (r.stage, r.reason) == (
        "sink",
        "empty-top-k",
    )


def test_undecodable_dead_letter_uses_its_headers_and_topic():
    headers = [("stage", b"infer"), ("error-reason", b"oom"), ("error-class", b"RuntimeError")]
    m = map_record(kafka(topics.INFER_DLQ, b"not avro", headers, key=b"img-4"))
    w, _drop = m.writes
    r = w.row
    assert (r.image_id, r.stage, r.reason, r.error_class) == (
        "img-4",
        "infer",
        "oom",
        "RuntimeError",
    )
    bare = map_record(kafka(topics.POSTPROCESS_DLQ, b"x", [], key=b"img-5")).writes[0].row
    assert bare.stage == "postprocess"
    assert bare.reason.startswith("undecodable-dead-letter")


def test_write_failure_dead_letter_keeps_the_error():
    value, headers = codec.encode("Prediction", prediction())
    m = map_record(kafka(topics.PREDICTIONS, value, headers))
    req = write_failed_request(m, ValueError("refused"))
    assert req.reason == "cassandra-refused" and req.error_class == "ValueError"
    assert req.image_id == "img-1" and not req.retriable


@pytest.mark.parametrize(
    "name", [PREDICTION, PREDICTION_BY_LABEL, REJECTION, DELETE_REJECTION, DELETE_PREDICTION]
)
def test_every_statement_binds_exactly_the_mapped_values(name):
    value, headers = codec.encode("Prediction", prediction())
    dl_value, dl_headers = dead_letter.dead_letter(
        image_id="x",
        stage="infer",
        reason="r",
        origin_topic="t",
        origin_partition=0,
        origin_offset=0,
        payload=b"",
    )
    writes = {w.statement: w for w in map_record(kafka(topics.PREDICTIONS, value, headers)).writes}
    writes |= {
        w.statement: w for w in map_record(kafka(topics.INFER_DLQ, dl_value, dl_headers)).writes
    }
    cql = write_statements("ks_unit")[name]
    assert cql.count("?") == len(writes[name].bind_values())
    if writes[name].is_delete:
        assert re.fullmatch(r"DELETE FROM ks_unit\.\w+ USING TIMESTAMP \? WHERE image_id = \?", cql)
        assert writes[name].bind_values()[0] == writes[name].timestamp_us
    else:
        assert re.search(r"USING TIMESTAMP \?$", cql) and "ks_unit." in cql


def test_keyspace_name_is_validated():
    with pytest.raises(ValueError):
        write_statements("vision; DROP")


class Cells:
    """Cassandra's last-write-wins for whole rows: newest data vs newest tombstone, a
    tombstone winning a tie (how a row delete shadows a row written at the same time)."""

    def __init__(self):
        self.data: dict[tuple[str, str], int] = {}
        self.tomb: dict[tuple[str, str], int] = {}

    def apply(self, writes):
        table = {
            PREDICTION: "p",
            PREDICTION_BY_LABEL: "l",
            REJECTION: "r",
            DELETE_REJECTION: "r",
            DELETE_PREDICTION: "p",
        }
        for w in writes:
            key = (
                table[w.statement],
                w.params[0] if w.is_delete else w.row.image_id,
            )
            store = self.tomb if w.is_delete else self.data
            store[key] = max(store.get(key, -1), w.timestamp_us)

    def live(self, table, image_id):
        key = (table, image_id)
        return key in self.data and self.data[key] > self.tomb.get(key, -1)


def _pred_writes(ms):
    return map_record(
        kafka(topics.PREDICTIONS, *codec.encode("Prediction", prediction(processed_at_ms=ms)))
    ).writes


def _rej_writes(ms, monkeypatch):
    monkeypatch.setattr(dead_letter, "now_ms", lambda: ms)
    value, headers = dead_letter.dead_letter(
        image_id="img-1",
        stage="infer",
        reason="r",
        origin_topic="t",
        origin_partition=0,
        origin_offset=0,
        payload=b"",
    )
    return map_record(kafka(topics.INFER_DLQ, value, headers)).writes


@pytest.mark.parametrize(
    "pred_ms, rej_ms, winner", [(2000, 1000, "p"), (1000, 2000, "r"), (1500, 1500, "p")]
)
@pytest.mark.parametrize("order", ["pred-first", "rej-first", "replayed"])
def test_one_status_per_image_the_newer_write_wins_in_any_order(
    pred_ms, rej_ms, winner, order, monkeypatch
):
    p, r = _pred_writes(pred_ms), _rej_writes(rej_ms, monkeypatch)
    sequence = {"pred-first": [p, r], "rej-first": [r, p], "replayed": [r, p, r, p, r]}[order]
    cells = Cells()
    for writes in sequence:
        cells.apply(writes)
    assert {t for t in ("p", "r") if cells.live(t, "img-1")} == {winner}


def test_every_added_column_is_in_the_ddl_and_written():
    from schemas import cql as ddl

    tables = "\n".join(ddl.table_ddl("vision"))
    for table, column, cql_type in ddl.ADDED_COLUMNS:
        body = tables.split(f"vision.{table} (", 1)[1].split(")", 1)[0]
        assert re.search(rf"^\s*{column}\s+{cql_type}\s*$", body, re.M), column
        assert ddl.add_column_ddl("ks", table, column, cql_type) == (
            f"ALTER TABLE ks.{table} ADD {column} {cql_type}"
        )
    assert "raw_key" in write_statements("ks")[REJECTION]
    with pytest.raises(ValueError):
        ddl.add_column_ddl("ks", "rejections", "evil", "text")


@pytest.mark.parametrize("row_type", rows.ROW_TYPES)
def test_each_insert_names_the_row_columns_in_order_and_binds_each_value(row_type):
    from consumers.records import UPSERT_OF

    text = write_statements("ks")[UPSERT_OF[row_type]]
    named = re.search(r"\(([^)]*)\) VALUES", text)
    assert named and tuple(c.strip() for c in named[1].split(",")) == rows.columns(row_type)
    # A `?` per bound column, plus the write timestamp.
    assert text.count("?") == len(rows.bound_columns(row_type)) + 1
    assert text.endswith("USING TIMESTAMP ?")
