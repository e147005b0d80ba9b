"""Does Kafka still hold what a restore needs replayed? Pure: times are passed in.

Restore brings the database back to a backup; replay rebuilds everything after it from
`images.raw` (reprocess) or the result topics. That works only while the topics still
keep every record since the backup: retention must exceed the backup interval (plus a
missed run), and the time since the last backup must stay inside retention.
"""

from __future__ import annotations

HOUR_MS = 3_600_000


def _h(ms: float) -> str:
    return f"{ms / HOUR_MS:.1f}h"


def retention_warnings(
    topic: str, retention_ms: int, interval_hours: float, now_ms: int, last_backup_ms: int | None
) -> list[str]:
    """Plain-language warnings, empty when retention covers the backups."""
    if retention_ms < 0:
        return []  # kept forever
    out: list[str] = []
    interval_ms = interval_hours * HOUR_MS
    if retention_ms < 2 * interval_ms:
        out.append(
            f"{topic} keeps records for {_h(retention_ms)}, less than two backup intervals "
            f"({_h(2 * interval_ms)} at one backup every {interval_hours:g}h): one missed "
            f"backup and replay can no longer rebuild everything after the last one; raise "
            f"retention.ms or back up more often"
        )
    if last_backup_ms is not None and now_ms - last_backup_ms > retention_ms:
        out.append(
            f"{topic} retention ({_h(retention_ms)}) no longer covers the time since the last "
            f"backup ({_h(now_ms - last_backup_ms)} ago): records between that backup and "
            f"{_h(retention_ms)} ago are gone from Kafka, so restoring it cannot be completed "
            f"by replay; keep this new backup"
        )
    return out
