import re

import pytest

from consumers.records import (
    PREDICTION,
    PREDICTION_BY_LABEL,
    REJECTION,
    KafkaRecord,
    map_record,
    sink_dead_letter,
    write_failed_request,
)
from consumers.statements import write_statements
from schemas import codec, dead_letter, topics

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
    main, by_label = m.writes
    assert main.statement == PREDICTION and by_label.statement == PREDICTION_BY_LABEL
    assert main.timestamp_us == by_label.timestamp_us == 1_700_000_005_000 * 1000
    p = main.params
    assert p[:4] == ("img-1", "golden retriever", 207, 0.875)
    assert p[4] == [(207, "golden retriever", 0.875), (208, "Labrador retriever", 0.0625)]
    assert p[9:12] == (topics.RAW, 2, 41)
    assert p[12] == 1_700_000_000_000 and p[13] == 1_700_000_005_000
    assert p[14] == {"decode": 1_700_000_001_000, "infer": 1_700_000_003_000}
    assert by_label.params[:3] == ("golden retriever", "img-1", 0.875)


def test_newer_record_gets_a_larger_timestamp():
    old = map_record(kafka(topics.PREDICTIONS, *codec.encode("Prediction", prediction(
        processed_at_ms=1000))))
    new = map_record(kafka(topics.PREDICTIONS, *codec.encode("Prediction", prediction(
        processed_at_ms=2000))))
    assert old.writes[0].timestamp_us == 1_000_000 < new.writes[0].timestamp_us == 2_000_000


def test_prediction_v1_without_trace_still_maps():
    v1 = prediction()
    del v1["trace"]
    value, headers = codec.encode("Prediction", v1, version=1)
    m = map_record(kafka(topics.PREDICTIONS, value, headers))
    assert m.kind == "prediction" and m.writes[0].params[14] == {}


def test_dead_letter_maps_to_a_rejection_with_failed_at_as_write_time():
    value, headers = dead_letter.dead_letter(
        image_id="img-2", stage="decode", reason="truncated", error=ValueError("bad jpeg"),
        origin_topic=topics.RAW, origin_partition=1, origin_offset=17, payload=b"\xff\xd8",
        source="cam", produced_at_ms=1_600_000_000_000,
    )
    failed_at = dead_letter.read_dead_letter(value, headers)["failed_at_ms"]
    m = map_record(kafka(topics.DECODE_DLQ, value, headers, key=b"img-2"))
    assert m.kind == "rejection" and m.dead_letter is None
    (w,) = m.writes
    assert w.statement == REJECTION and w.timestamp_us == failed_at * 1000
    assert w.params[:6] == ("img-2", "decode", "truncated", "ValueError", "bad jpeg", False)
    assert w.params[6:12] == ("cam", topics.RAW, 1, 17, 1_600_000_000_000, failed_at)


def test_undecodable_prediction_with_a_key_becomes_a_rejection_and_a_dead_letter():
    _, headers = codec.encode("Prediction", prediction())
    rec = kafka(topics.PREDICTIONS, b"\x01garbage", headers, key=b"img-3")
    m = map_record(rec)
    assert m.kind == "refused" and m.image_id == "img-3"
    (w,) = m.writes
    assert w.statement == REJECTION and w.timestamp_us == KAFKA_TS * 1000  # fixed: replay-safe
    assert w.params[:3] == ("img-3", "sink", "undecodable")
    assert w.params[7:10] == (topics.PREDICTIONS, 3, 9)
    assert m.dead_letter is not None and m.dead_letter.reason == "undecodable"
    # The sink's dead letter keeps the original payload and where it came from.
    value, dl_headers = sink_dead_letter(rec, m.dead_letter)
    dl = dead_letter.read_dead_letter(value, dl_headers)
    assert dl["payload"] == b"\x01garbage" and dl["stage"] == "sink"
    assert (dl["origin_topic"], dl["origin_partition"], dl["origin_offset"]) == (
        topics.PREDICTIONS, 3, 9)
    assert dl["image_id"] == "img-3"


def test_wrong_schema_header_is_refused_with_its_reason():
    value, headers = codec.encode("Prediction", prediction())
    bad_headers = [(k, v) for k, v in headers if k != codec.H_SCHEMA_NAME]
    m = map_record(kafka(topics.PREDICTIONS, value, bad_headers))
    assert m.kind == "refused" and m.dead_letter.reason == "wrong-schema"
    assert m.writes[0].params[2] == "wrong-schema"


def test_undecodable_record_without_image_id_only_goes_to_the_sink_dlq():
    m = map_record(kafka(topics.PREDICTIONS, b"junk", [], key=None))
    assert m.kind == "refused" and m.writes == () and m.image_id is None
    assert m.dead_letter is not None and m.dead_letter.image_id == ""


def test_prediction_without_classes_is_refused():
    value, headers = codec.encode("Prediction", prediction(top_k=[]))
    m = map_record(kafka(topics.PREDICTIONS, value, headers))
    assert m.kind == "refused" and m.dead_letter.reason == "empty-top-k"
    assert m.writes[0].params[:3] == ("img-1", "sink", "empty-top-k")


def test_undecodable_dead_letter_uses_its_headers_and_topic():
    headers = [("stage", b"infer"), ("error-reason", b"oom"), ("error-class", b"RuntimeError")]
    m = map_record(kafka(topics.INFER_DLQ, b"not avro", headers, key=b"img-4"))
    (w,) = m.writes
    assert w.params[:4] == ("img-4", "infer", "oom", "RuntimeError")
    bare = map_record(kafka(topics.POSTPROCESS_DLQ, b"x", [], key=b"img-5"))
    assert bare.writes[0].params[1] == "postprocess"
    assert bare.writes[0].params[2].startswith("undecodable-dead-letter")


def test_write_failure_dead_letter_keeps_the_error():
    value, headers = codec.encode("Prediction", prediction())
    m = map_record(kafka(topics.PREDICTIONS, value, headers))
    req = write_failed_request(m, TimeoutError("replicas"), retriable=True)
    assert req.reason == "cassandra-retries-exhausted" and req.error_class == "TimeoutError"
    assert req.image_id == "img-1" and req.retriable


@pytest.mark.parametrize("name", [PREDICTION, PREDICTION_BY_LABEL, REJECTION])
def test_every_statement_binds_exactly_the_mapped_values(name):
    value, headers = codec.encode("Prediction", prediction())
    dl_value, dl_headers = dead_letter.dead_letter(
        image_id="x", stage="infer", reason="r", origin_topic="t", origin_partition=0,
        origin_offset=0, payload=b"")
    writes = {w.statement: w for w in map_record(kafka(topics.PREDICTIONS, value, headers)).writes}
    writes |= {w.statement: w for w in map_record(kafka(topics.INFER_DLQ, dl_value, dl_headers)).writes}
    cql = write_statements("ks_unit")[name]
    assert cql.count("?") == len(writes[name].bind_values())
    assert re.search(r"USING TIMESTAMP \?$", cql) and "ks_unit." in cql


def test_keyspace_name_is_validated():
    with pytest.raises(ValueError):
        write_statements("vision; DROP")
