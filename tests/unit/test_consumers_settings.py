import pytest
from pydantic import ValidationError

from consumers.settings import SinkSettings
from schemas import topics


def test_defaults_are_the_registry_topics():
    s = SinkSettings()
    assert s.sink.topics() == [
        topics.PREDICTIONS,
        topics.DECODE_DLQ,
        topics.INFER_DLQ,
        topics.POSTPROCESS_DLQ,
    ]
    assert s.sink.dead_letter_topic == topics.SINK_DLQ
    assert s.cassandra.write_consistency == s.cassandra.read_consistency == "LOCAL_QUORUM"


def test_env_overrides(monkeypatch):
    monkeypatch.setenv("PIPELINE_SINK__DLQ_TOPICS", "a.dlq, b.dlq")
    monkeypatch.setenv("PIPELINE_SINK__CONCURRENCY", "128")
    monkeypatch.setenv("PIPELINE_SINK__RETRY__MAX_BACKOFF_S", "7")
    monkeypatch.setenv("PIPELINE_CASSANDRA__KEYSPACE", "ks_env")
    s = SinkSettings()
    assert s.sink.dlq_topics == ["a.dlq", "b.dlq"]
    assert s.sink.concurrency == 128 and s.sink.retry.max_backoff_s == 7
    assert s.cassandra.keyspace == "ks_env"


def test_an_attempt_limit_is_refused_at_start(monkeypatch):
    # Transient errors are retried forever; a limit would commit past unwritten images.
    monkeypatch.setenv("PIPELINE_SINK__RETRY__MAX_ATTEMPTS", "5")
    with pytest.raises(ValidationError, match="max_attempts"):
        SinkSettings()


def test_consume_max_messages_is_read_from_its_env_name(monkeypatch):
    monkeypatch.setenv("PIPELINE_SINK__CONSUME_MAX_MESSAGES", "250")
    assert SinkSettings().sink.consume_max_messages == 250


def test_the_old_batch_size_name_still_works_with_a_warning(monkeypatch):
    monkeypatch.setenv("PIPELINE_SINK__BATCH_SIZE", "42")
    with pytest.warns(FutureWarning, match="PIPELINE_SINK__CONSUME_MAX_MESSAGES"):
        s = SinkSettings()
    assert s.sink.consume_max_messages == 42
    assert not hasattr(s.sink, "batch_size")


def test_old_and_new_names_with_different_values_are_refused(monkeypatch):
    monkeypatch.setenv("PIPELINE_SINK__BATCH_SIZE", "42")
    monkeypatch.setenv("PIPELINE_SINK__CONSUME_MAX_MESSAGES", "250")
    with pytest.raises(ValidationError, match="old name of sink.consume_max_messages"):
        SinkSettings()
