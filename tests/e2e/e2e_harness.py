"""End-to-end harness: the real pipeline (2 stream workers + the sink) on the real clusters.

A test publishes its own images (content ids unique to the test), optionally breaks
something mid-stream, and then checks the accounting invariant in Cassandra: every
produced id is in exactly one of predictions or rejections, none missing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.accounting import Accounting, account
from infra import groups
from infra.services import Services
from producers.items import Item
from producers.publisher import PublishResult, publish_items
from producers.settings import ProducerSettings

WORKERS = 2
ACCOUNT_TIMEOUT_S = 600.0


def settings_env(bootstrap: str, contact_points: list[str], keyspace: str) -> dict[str, str]:
    return {
        "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "PIPELINE_CASSANDRA__CONTACT_POINTS": ",".join(contact_points),
        "PIPELINE_CASSANDRA__KEYSPACE": keyspace,
        # Fault tests want fast failure detection; the health line every few seconds helps
        # when a test fails and its logs are read.
        "PIPELINE_SINK__HEALTH_INTERVAL_S": "5",
    }


@dataclass
class Pipeline:
    services: Services
    env: dict[str, str]
    kafka: Any
    cassandra: Any
    session: Any
    keyspace: str
    sink_group: str
    stream_group: str
    run_dir: Path
    published: list[PublishResult] = field(default_factory=list)

    def wait_ready(self, workers: int = WORKERS) -> None:
        groups.wait_for_group(self.kafka, self.sink_group, 1, timeout_s=180)
        groups.wait_for_group(self.kafka, self.stream_group, workers, timeout_s=300)

    def publish(self, items: Iterable[Item]) -> PublishResult:
        with _env(self.env):
            settings = ProducerSettings()
        res = publish_items(items, settings)
        self.published.append(res)
        return res

    def publish_in_background(self, items: Iterable[Item]) -> tuple[threading.Thread, list[PublishResult]]:
        out: list[PublishResult] = []

        def run() -> None:
            out.append(self.publish(items))

        t = threading.Thread(target=run, name="publisher", daemon=True)
        t.start()
        return t, out

    def account(self, ids: Iterable[str]) -> Accounting:
        return account(self.session, self.keyspace, ids)

    def wait_accounted(
        self, ids: list[str], timeout_s: float = ACCOUNT_TIMEOUT_S, at_least: int | None = None
    ) -> Accounting:
        """Poll until all `ids` (or `at_least` of them) are stored or rejected."""
        want = len(ids) if at_least is None else at_least
        deadline = time.monotonic() + timeout_s
        acc = self.account(ids)
        while len(ids) - len(acc.missing) < want and time.monotonic() < deadline:
            time.sleep(1.0)
            with contextlib.suppress(Exception):  # a node may be down mid-fault: poll again
                acc = self.account(ids)
        return acc

    def diagnose(self) -> str:
        parts = []
        for st in self.services.status():
            parts.append(f"--- {st.name} ({st.state}, pid {st.pid}) ---\n{self.services.tail(st.name, 30)}")
        with contextlib.suppress(Exception):
            parts.append(str(groups.group_lag(self.kafka, self.stream_group, ["images.raw", "images.decoded", "images.inferred"])))
            parts.append(str(groups.group_lag(self.kafka, self.sink_group, ["images.predictions"])))
        return "\n".join(parts)


@contextlib.contextmanager
def _env(env: dict[str, str]) -> Iterator[None]:
    import os

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def assert_accounted(acc: Accounting, ids: list[str], diagnose: Callable[[], str]) -> None:
    assert not acc.both, f"{len(acc.both)} ids in both tables, e.g. {sorted(acc.both)[:3]}"
    assert not acc.missing, (
        f"{len(acc.missing)} of {len(ids)} ids missing, e.g. {sorted(acc.missing)[:3]}\n{diagnose()}"
    )
    assert len(acc.stored) + len(acc.rejected) == len(ids)
