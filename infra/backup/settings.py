"""Settings of `infra backup | restore | replay`: where backups go, how often they are
meant to run, and which topics and groups the pipeline uses (env PIPELINE_BACKUP__*).

`interval_hours` is the promise the retention check holds `images.raw` to: a backup is
useful for replay only while Kafka still keeps every raw image since it was taken.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from infra.settings import PipelineSettings
from schemas import topics

DEFAULT_SINK_GROUP = "vision-sink"
DEFAULT_STREAM_GROUP = "torchstream"


class BackupSection(BaseModel):
    # Default: <run dir>/backups.
    dir: str | None = None
    # How often backups are taken (cron, the supervisor or by hand). images.raw retention
    # must exceed it, with room for a missed run: see docs/backup.md.
    interval_hours: float = Field(default=24.0, gt=0)
    # The pipeline's topic prefix and groups (the defaults are the ones `make demo` uses).
    topic_prefix: str = ""
    sink_group: str = DEFAULT_SINK_GROUP
    stream_group: str = DEFAULT_STREAM_GROUP
    # Seconds a nodetool call (snapshot, import, repair) may take.
    nodetool_timeout_s: float = Field(default=600.0, gt=0)

    @property
    def raw_topic(self) -> str:
        return self.topic_prefix + topics.RAW

    @property
    def result_topics(self) -> list[str]:
        """What the sink reads: the predictions and every stage's dead letters."""
        return [
            self.topic_prefix + t for t in (topics.PREDICTIONS, *(s.dlq for s in topics.STAGES))
        ]

    def root(self, run_dir: Path) -> Path:
        return Path(self.dir).expanduser().resolve() if self.dir else run_dir / "backups"


class BackupSettings(PipelineSettings):
    backup: BackupSection = Field(default_factory=BackupSection)
