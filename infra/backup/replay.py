"""`infra replay`: rebuild results from Kafka by moving a stopped group's offsets.

- `--since-backup ID`: the sink group goes back to the committed offsets the backup's
  manifest recorded (partitions it had never committed: their earliest offset), so the
  sink writes again everything stored after the backup.
- `--from TIME`: the sink group goes to the first record at or after TIME on the result
  topics.
- `--reprocess --from TIME`: the stream group goes to TIME on images.raw, so the workers
  (started with the new model version) run the model again and the sink stores fresh
  results. Which row wins is the write timestamp: see docs/backup.md.

Refused while a group has active members (naming them): Kafka cannot move the offsets
of a live group, and a half-moved group would skip or repeat at random.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from infra.backup import kafka_state
from infra.backup.kafka_state import Offsets
from infra.backup.manifest import BackupError, Manifest
from infra.backup.settings import BackupSettings
from infra.kafka_retry import Deadline

log = logging.getLogger(__name__)
DEADLINE_S = 60.0
RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)([smhd])(?: ago)?$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class ReplayPlan:
    group: str
    offsets: Offsets
    records: int  # records the group will read again (end minus new offset)


def parse_time(text: str, now: datetime) -> int:
    """Epoch ms from ISO 8601 (UTC unless it says otherwise), epoch ms digits, or a
    duration ago: '30m', '2h ago', '-1d'. ValueError with the accepted forms otherwise."""
    t = text.strip()
    if t.isdigit():
        return int(t)
    m = RELATIVE.match(t)
    if m:
        return int(
            (now - timedelta(seconds=float(m.group(1)) * UNIT_S[m.group(2)])).timestamp() * 1000
        )
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r}: use ISO 8601 (2026-12-01T15:00:00Z), "
            f"epoch milliseconds, or a duration ago: 30m, 2h, 1d"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def refusal(members_by_group: dict[str, list[str]]) -> str | None:
    """Why replay must not run now (a group has live members), or None."""
    live = {g: m for g, m in members_by_group.items() if m}
    if not live:
        return None
    parts = [
        f"group {g} has {len(m)} active member{'s' if len(m) > 1 else ''} ({', '.join(m)})"
        for g, m in sorted(live.items())
    ]
    return (
        "refusing to replay: "
        + "; ".join(parts)
        + ". Stop them first (python -m orchestration pipeline down), then replay, then start them."
    )


def since_backup_offsets(manifest: Manifest, group: str, earliest: Offsets) -> Offsets:
    """The group's offsets recorded in the manifest; `earliest` where it had none."""
    recorded = manifest.kafka.get("groups", {}).get(group)
    if recorded is None:
        raise BackupError(f"backup {manifest.backup_id} recorded no offsets of group {group}")
    return {
        t: {p: recorded.get(t, {}).get(p, off) for p, off in parts.items()}
        for t, parts in earliest.items()
    }


def records_between(start: Offsets, end: Offsets) -> int:
    return sum(max(0, end[t][p] - o) for t, parts in start.items() for p, o in parts.items())


def plan(
    settings: BackupSettings,
    *,
    manifest: Manifest | None = None,
    from_ms: int | None = None,
    reprocess: bool = False,
) -> ReplayPlan:
    """What replay would do; raises BackupError when a group it moves is live."""
    b = settings.backup
    adm = kafka_state.admin(settings.kafka)
    dl = Deadline(DEADLINE_S)
    group = b.stream_group if reprocess else b.sink_group
    topics = [b.raw_topic] if reprocess else b.result_topics
    why = refusal({group: kafka_state.members(adm, group, dl)})
    if why:
        raise BackupError(why)
    end = kafka_state.end_offsets(adm, topics, dl)
    if manifest is not None:
        earliest = kafka_state.offsets_for_time(adm, topics, 0, dl)
        offsets = since_backup_offsets(manifest, group, earliest)
    elif from_ms is not None:
        offsets = kafka_state.offsets_for_time(adm, topics, from_ms, dl)
    else:
        raise ValueError("replay needs a backup or a time")
    return ReplayPlan(group, offsets, records_between(offsets, end))


def apply(settings: BackupSettings, p: ReplayPlan) -> None:
    adm = kafka_state.admin(settings.kafka)
    dl = Deadline(DEADLINE_S)
    why = refusal({p.group: kafka_state.members(adm, p.group, dl)})  # still stopped?
    if why:
        raise BackupError(why)
    kafka_state.alter_offsets(adm, p.group, p.offsets, dl)
    log.info("replay: group %s moved; %d records to read again", p.group, p.records)
