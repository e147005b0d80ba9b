"""Topic registry invariants: pipeline order, durability settings, DLQs, sizes."""

from __future__ import annotations

import pytest

from schemas import topics
from schemas.topics import STAGES, TopicSpec, topic_registry

IMAGE_BYTES = 10 * 1024 * 1024


def by_name(partitions: int = 6) -> dict[str, TopicSpec]:
    return {t.name: t for t in topic_registry(partitions)}


def test_names_are_unique_and_cover_every_constant() -> None:
    names = [t.name for t in topic_registry()]
    assert len(names) == len(set(names))
    constants = {
        topics.RAW,
        topics.DECODED,
        topics.INFERRED,
        topics.PREDICTIONS,
        *topics.DLQ_TOPICS,
    }
    assert set(names) == constants
    assert topics.topic_names() == names


def test_pipeline_order_matches_stages() -> None:
    data_topics = [t.name for t in topic_registry() if t.name not in topics.DLQ_TOPICS]
    assert data_topics == [STAGES[0].source, *[s.sink for s in STAGES]]
    assert data_topics == [topics.RAW, topics.DECODED, topics.INFERRED, topics.PREDICTIONS]
    for a, b in zip(STAGES, STAGES[1:], strict=False):
        assert a.sink == b.source
    assert [s.name for s in STAGES] == ["decode", "infer", "postprocess"]
    assert {s.name: s for s in STAGES} == topics.STAGE_BY_NAME


def test_each_stage_has_its_own_dlq_on_its_input_topic() -> None:
    reg = by_name()
    dlqs = [s.dlq for s in STAGES]
    assert len(set(dlqs)) == len(dlqs)
    for stage in STAGES:
        spec = reg[stage.source]
        assert spec.stage == stage.name
        assert spec.dlq == stage.dlq
        assert reg[stage.dlq].value == "avro:DeadLetter"
    # The sink reads predictions and has its own DLQ.
    assert reg[topics.PREDICTIONS].stage == "sink"
    assert reg[topics.PREDICTIONS].dlq == topics.SINK_DLQ


def test_each_dlq_follows_the_topic_it_serves() -> None:
    names = [t.name for t in topic_registry()]
    for spec in topic_registry():
        if spec.dlq:
            assert names.index(spec.dlq) == names.index(spec.name) + 1


@pytest.mark.parametrize("partitions", [1, 6, 12])
def test_durability_settings_everywhere(partitions: int) -> None:
    for spec in topic_registry(partitions):
        assert spec.partitions == partitions
        assert spec.replication_factor == 3
        assert spec.min_insync_replicas == 2
        conf = spec.configs()
        assert conf["min.insync.replicas"] == "2"
        assert conf["unclean.leader.election.enable"] == "false"
        assert conf["max.message.bytes"] == str(spec.max_message_bytes)
        assert all(isinstance(v, str) for v in conf.values())
        assert spec.key == "image id (utf-8)"


def test_message_sizes_fit_images_and_dead_letters() -> None:
    reg = by_name()
    assert reg[topics.RAW].max_message_bytes >= IMAGE_BYTES
    decoded_tensor = 3 * 224 * 224
    assert reg[topics.DECODED].max_message_bytes >= decoded_tensor * 2
    assert reg[topics.INFERRED].max_message_bytes >= 1000 * 4 * 2  # 1000 float32 logits
    # A dead letter carries the original payload: every DLQ fits the largest raw image.
    for name in topics.DLQ_TOPICS:
        assert reg[name].max_message_bytes > reg[topics.RAW].max_message_bytes


def test_raw_size_follows_the_setting() -> None:
    reg = {t.name: t for t in topic_registry(6, raw_max_message_bytes=2 * 1024 * 1024)}
    assert reg[topics.RAW].max_message_bytes == 2 * 1024 * 1024
    assert reg[topics.DECODE_DLQ].max_message_bytes > 2 * 1024 * 1024


def test_value_contracts_name_existing_avro_schemas() -> None:
    from schemas import codec

    for spec in topic_registry():
        if spec.value.startswith("avro:"):
            assert spec.value.removeprefix("avro:") in codec.schema_names()


def test_kafka_settings_size_every_topic_from_one_place() -> None:
    from infra.provision import registry_topics
    from infra.settings import KafkaSettings, PipelineSettings

    big = 20 * 1024 * 1024
    kafka = KafkaSettings(
        max_message_bytes=big, partitions=3, replication_factor=2, min_insync_replicas=1
    )
    by_name = {t.name: t for t in kafka.topics()}
    assert by_name["images.raw"].max_message_bytes == big
    # A dead letter carries the original payload: its topic holds the largest input.
    assert by_name["images.decode.dlq"].max_message_bytes > big
    assert {
        (t.partitions, t.replication_factor, t.min_insync_replicas) for t in by_name.values()
    } == {(3, 2, 1)}
    # Provisioning creates exactly these (PIPELINE_KAFKA__MAX_MESSAGE_BYTES reaches topics).
    provisioned = {t.name: t for t in registry_topics(PipelineSettings(kafka=kafka))}
    assert provisioned["images.raw"].configs()["max.message.bytes"] == str(big)
