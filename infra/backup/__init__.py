"""Backup, restore and replay of the result keyspace (issue 14).

`take_backup` snapshots every node under one tag and copies the files out with a
manifest (schema, files with sha256, row counts, Kafka offsets); `verify` re-checks a
backup; `restore` loads one into an absent or empty keyspace and checks the row counts;
`replay` moves a stopped group's offsets to rebuild what came after. The CLI is
`python -m infra backup | restore | replay` (infra/backup/cli.py); docs/backup.md.
"""

from infra.backup.manifest import BackupError, Manifest, list_backups, load_manifest, verify
from infra.backup.replay import ReplayPlan, apply, parse_time, plan
from infra.backup.restore import RestoreResult, restore
from infra.backup.settings import BackupSection, BackupSettings
from infra.backup.snapshot import BackupResult, take_backup

__all__ = [
    "BackupError",
    "BackupResult",
    "BackupSection",
    "BackupSettings",
    "Manifest",
    "ReplayPlan",
    "RestoreResult",
    "apply",
    "list_backups",
    "load_manifest",
    "parse_time",
    "plan",
    "restore",
    "take_backup",
    "verify",
]
