"""Shared fixtures. Cluster fixtures are lazy: only tests that request them start servers.

PIPELINE_TEST_BACKEND=native (default) | docker | external; see tests/cluster_backends.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_backends import BACKENDS, Backend, CassandraCluster, KafkaCluster, make_backend

from infra.local import CASSANDRA, KAFKA
from infra.settings import PipelineSettings


@pytest.hookimpl(trylast=True)  # after the terminal reporter is registered
def pytest_configure(config: pytest.Config) -> None:
    name = os.environ.get("PIPELINE_TEST_BACKEND", "native").strip().lower() or "native"
    if name not in BACKENDS:
        raise pytest.UsageError(f"PIPELINE_TEST_BACKEND={name!r}: use one of {', '.join(BACKENDS)}")
    global _terminal
    _terminal = config.pluginmanager.get_plugin("terminalreporter")


_terminal: Any = None
INLINE_FAILURE_LINES = 40


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A failure's last lines are printed as it happens, not only in the summary: a run cut
    short (a CI time limit) still shows why its tests failed."""
    if not report.failed or _terminal is None:
        return
    lines = report.longreprtext.splitlines()[-INLINE_FAILURE_LINES:]
    _terminal.write_line("")
    _terminal.write_line(f"FAILED ({report.when}) {report.nodeid} after {report.duration:.0f}s:")
    for line in lines:
        _terminal.write_line("    " + line)


@pytest.fixture(scope="session")
def cluster_backend() -> Iterator[Backend]:
    backend = make_backend()
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="session")
def kafka_cluster(cluster_backend: Backend) -> KafkaCluster:
    """The 3-broker Kafka cluster, started on first use (once per session)."""
    cluster_backend.ensure(KAFKA)
    return KafkaCluster(cluster_backend)


@pytest.fixture(scope="session")
def cassandra_cluster(cluster_backend: Backend) -> CassandraCluster:
    """The 3-node Cassandra cluster, started on first use (once per session)."""
    cluster_backend.ensure(CASSANDRA)
    return CassandraCluster(cluster_backend)


@pytest.fixture
def pipeline_settings(cluster_backend: Backend) -> PipelineSettings:
    """Settings pointing at the test clusters (starts nothing by itself)."""
    return cluster_backend.settings()


@pytest.fixture
def unique_name() -> str:
    """A short name unique to this test, valid as a topic, group or keyspace name."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def secure(cluster_backend: Backend) -> PipelineSettings:
    """The cluster's settings, for tests that need it secure (skipped on a plaintext one)."""
    settings: PipelineSettings = cluster_backend.settings()
    if not settings.security.secure:
        pytest.skip("the cluster under test is plaintext (PIPELINE_SECURITY__MODE != secure)")
    return settings
