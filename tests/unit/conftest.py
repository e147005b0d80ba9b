"""Unit tests run with fakes, never servers: no login is resolved from a run dir.

Services are secure by default and resolve their Kafka/Cassandra logins from the run
dir's secret files, which a fresh clone does not have. Unit tests that build settings
from the environment therefore run in plaintext mode; the tests of the secure paths
(test_infra_security, test_cassandra_security_config, test_compose) set the mode and
the secret files they need explicitly.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _plaintext_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_SECURITY__MODE", "plaintext")
