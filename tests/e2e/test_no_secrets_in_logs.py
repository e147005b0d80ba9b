"""No secret appears in any log of an end-to-end run on a secure cluster (issue 13).

The whole pipeline (producer, supervised stream workers, sink) carries images through,
then every file the services wrote under the pipeline's run dir and every node log of
the clusters are searched for every Kafka and Cassandra secret under the clusters'
secrets dir. (tests/integration/test_kafka_security.py covers a producer and a stream
worker at debug level; this covers the supervised services and the Cassandra roles.)
Skipped in plaintext mode, where there are no secrets.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_harness import Pipeline, assert_accounted

from infra.security import SECRET_KINDS
from producers.synthetic import synthetic_items

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

MAX_FILE_BYTES = 256 * 1024 * 1024  # logs are far smaller; bigger files are data, not logs


def _secrets(secrets_dir: Path) -> dict[str, bytes]:
    """{"kafka/sink": b"...", ...}: every secret file's value."""
    out = {}
    for kind in SECRET_KINDS:
        for f in sorted((secrets_dir / kind).glob("*")):
            value = f.read_bytes().strip()
            if value:
                out[f"{kind}/{f.name}"] = value
    return out


def _files(roots: list[Path]) -> Iterator[Path]:
    for root in roots:
        for f in sorted(root.rglob("*")):
            if f.is_file() and not f.is_symlink() and f.stat().st_size <= MAX_FILE_BYTES:
                yield f


def _node_log_dirs(cluster_backend) -> list[Path]:
    """The native clusters' node logs (other backends' logs are not ours to read)."""
    cluster = getattr(cluster_backend, "cluster", None)
    if cluster is None:
        return []
    return sorted(p for p in cluster.run_dir.glob("*/logs") if p.is_dir())


def test_no_secret_in_any_log_of_an_e2e_run(healthy: Pipeline, cluster_backend) -> None:
    security = cluster_backend.security()
    if not security.secure:
        pytest.skip("the clusters run in plaintext mode: there are no secrets to leak")
    secrets = _secrets(security.resolved_secrets_dir())
    used = {"kafka/producer", "kafka/stream", "kafka/sink", "cassandra/sink"}
    assert used <= set(secrets), f"secrets missing under {security.resolved_secrets_dir()}"

    items = list(synthetic_items(6, (96, 64), seed=random.randrange(1 << 30)))
    res = healthy.publish(items)
    ids = [i for i, _ in res.delivered]
    assert len(ids) == len(items), res.summary
    acc = healthy.wait_accounted(ids)
    assert_accounted(acc, ids, healthy.diagnose)

    service_logs = [healthy.services.log_file(st.name) for st in healthy.services.status()]
    assert any(p.exists() and p.stat().st_size > 0 for p in service_logs), service_logs
    leaks = []
    searched = 0
    for f in _files([healthy.run_dir, *_node_log_dirs(cluster_backend)]):
        data = f.read_bytes()
        searched += 1
        leaks += [f"{name} in {f}" for name, value in secrets.items() if value in data]
    assert searched >= len(service_logs)
    assert not leaks, "secrets in logs:\n" + "\n".join(leaks)
