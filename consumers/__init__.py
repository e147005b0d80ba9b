"""The Cassandra sink (Kafka predictions and dead letters -> Cassandra) and result queries.

`python -m consumers sink` runs the consumer group; `python -m consumers query` reads
results. The public names below are the API the demo and tests use.
"""

from consumers.consistency import ConsistencyConfigError, check_overlap, require_overlap
from consumers.offsets import WatermarkTracker
from consumers.queries import (
    all_ids,
    by_label,
    count_rows,
    fetch_predictions,
    fetch_rejections,
    list_rejections,
    stats,
)
from consumers.records import KafkaRecord, Mapped, Write, map_record
from consumers.settings import SinkSection, SinkSettings

__all__ = [
    "ConsistencyConfigError",
    "KafkaRecord",
    "Mapped",
    "SinkSection",
    "SinkSettings",
    "WatermarkTracker",
    "Write",
    "all_ids",
    "by_label",
    "check_overlap",
    "count_rows",
    "fetch_predictions",
    "fetch_rejections",
    "list_rejections",
    "map_record",
    "require_overlap",
    "stats",
]
