"""Pure contracts of the pipeline: topics, record schemas, image ids, Cassandra DDL.

No Kafka, Faust, torch or driver imports here: every service depends on this package.
"""

from schemas import codec, cql, dead_letter, topics
from schemas.codec import SchemaError, decode, encode
from schemas.image_id import InvalidImageId, content_id, image_id_for, validate_image_id
from schemas.raw import RawImage, RawRecordError, parse_raw, raw_headers, sniff_content_type
from schemas.topics import STAGES, TopicSpec, topic_registry

__all__ = [
    "STAGES",
    "InvalidImageId",
    "RawImage",
    "RawRecordError",
    "SchemaError",
    "TopicSpec",
    "codec",
    "content_id",
    "cql",
    "dead_letter",
    "decode",
    "encode",
    "image_id_for",
    "parse_raw",
    "raw_headers",
    "sniff_content_type",
    "topic_registry",
    "topics",
    "validate_image_id",
]
