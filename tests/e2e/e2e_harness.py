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

from cluster_backends import security_env

from demo.accounting import Accounting, account
from infra import groups
from infra.security import SecuritySettings
from orchestration import pipeline_status
from orchestration.services import Services
from producers.items import Item
from producers.publisher import PublishResult, publish_items
from producers.settings import ProducerSettings
from schemas import topics

WORKERS = 2
ACCOUNT_TIMEOUT_S = 600.0


def settings_env(
    bootstrap: str,
    contact_points: list[str],
    run_id: str,
    run_dir: Path,
    security: SecuritySettings | None = None,
) -> dict[str, str]:
    """Env of a private pipeline: its own topics (prefix), groups and keyspace, so backlog
    or offsets left by a demo, a benchmark or another test never leak into it.

    `security` (the test backend's) names the mode, certificates and secrets of the
    clusters: the services run with PIPELINE_RUN_DIR=`run_dir`, a temp dir that holds
    neither, so they are named explicitly."""
    prefix = f"{run_id}."
    return {
        **(security_env(security) if security is not None else {}),
        "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "PIPELINE_CASSANDRA__CONTACT_POINTS": ",".join(contact_points),
        "PIPELINE_CASSANDRA__KEYSPACE": run_id.replace("-", "_"),
        "PIPELINE_PRODUCER__TOPIC": prefix + topics.RAW,
        "PIPELINE_STREAM__TOPIC_PREFIX": prefix,
        "PIPELINE_STREAM__WORKER__APP_ID": f"{run_id}-stream",
        "PIPELINE_STREAM__WORKER__DATA_DIR": str(run_dir / "stream-data"),
        "PIPELINE_STREAM__WORKER__HEALTH_LOG_INTERVAL_S": "10",
        "PIPELINE_SINK__GROUP_ID": f"{run_id}-sink",
        "PIPELINE_SINK__PREDICTIONS_TOPIC": prefix + topics.PREDICTIONS,
        "PIPELINE_SINK__DLQ_TOPICS": ",".join(prefix + s.dlq for s in topics.STAGES),
        "PIPELINE_SINK__DEAD_LETTER_TOPIC": prefix + topics.SINK_DLQ,
        "PIPELINE_SINK__HEALTH_INTERVAL_S": "10",
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
    prefix: str
    published: list[PublishResult] = field(default_factory=list)

    @property
    def raw_topic(self) -> str:
        return self.prefix + topics.RAW

    def topic(self, name: str) -> str:
        return self.prefix + name

    def wait_ready(self, workers: int = WORKERS) -> None:
        """Until the sink and the workers hold their partitions; a service that died
        meanwhile is restarted once, and a timeout reports every service's log tail."""
        for attempt in (1, 2):
            try:
                groups.wait_for_group(self.kafka, self.sink_group, 1, timeout_s=120)
                groups.wait_for_group(self.kafka, self.stream_group, workers, timeout_s=180)
                return
            except TimeoutError as exc:
                dead = [st.name for st in self.services.status() if st.state == "down"]
                if attempt == 2 or not dead:
                    raise TimeoutError(f"{exc}\n{self.diagnose()}") from exc
                for name in dead:
                    self.services.restart(name)

    def publish(self, items: Iterable[Item]) -> PublishResult:
        with _env(self.env):
            settings = ProducerSettings()
        res = publish_items(items, settings)
        self.published.append(res)
        return res

    def publish_in_background(
        self, items: Iterable[Item]
    ) -> tuple[threading.Thread, list[PublishResult]]:
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
        with contextlib.suppress(Exception):  # per-stage health of every supervised worker
            parts.append(pipeline_status.render(pipeline_status.collect(self.services)))
        for st in self.services.status():
            parts.append(
                f"--- {st.name} ({st.state}, pid {st.pid}) ---\n{self.services.tail(st.name, 30)}"
            )
        with contextlib.suppress(Exception):
            parts.append(
                str(
                    groups.group_lag(
                        self.kafka,
                        self.stream_group,
                        [self.topic(t) for t in (topics.RAW, topics.DECODED, topics.INFERRED)],
                    )
                )
            )
            parts.append(
                str(groups.group_lag(self.kafka, self.sink_group, [self.topic(topics.PREDICTIONS)]))
            )
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
