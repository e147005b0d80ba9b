"""Sink throughput into the 3-node RF 3 cluster at LOCAL_QUORUM, per concurrency window.

Not a pass/fail benchmark: it checks every record landed and prints rows/s (two rows
per prediction: predictions + predictions_by_label). Run with -s to see the numbers:
  CONSUMERS_BENCH_RECORDS=20000 CONSUMERS_BENCH_CONCURRENCY=16,64,128 \
    pytest -s tests/integration/test_consumers_throughput.py
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
from test_consumers_sink import WAIT_S, Env, SinkThread, env, group_lag, ids, publish_predictions

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

__all__ = ["env"]  # the module-scoped fixture, shared with the sink tests

RECORDS = int(os.environ.get("CONSUMERS_BENCH_RECORDS", "20000"))
CONCURRENCY = [
    int(c) for c in os.environ.get("CONSUMERS_BENCH_CONCURRENCY", "16,64,128").split(",")
]
RESULTS: dict[int, float] = {}


@pytest.fixture(scope="module")
def published(env: Env) -> list[str]:
    image_ids = ids(f"bench{uuid.uuid4().hex[:6]}", RECORDS)
    publish_predictions(env, image_ids, int(time.time() * 1000))
    return image_ids


@pytest.mark.parametrize("concurrency", CONCURRENCY)
def test_rows_per_second(env: Env, published: list[str], concurrency: int) -> None:
    group = f"bench-{concurrency}-{uuid.uuid4().hex[:6]}"
    with SinkThread(
        env.settings(
            group, concurrency=concurrency, max_pending_records=10_000, health_interval_s=5.0
        )
    ) as run:
        deadline = time.monotonic() + WAIT_S * 5
        first = None
        while time.monotonic() < deadline:
            if first is None and run.sink.rows_written:
                first = (time.monotonic(), run.sink.rows_written)
            if run.done() >= len(published) and run.sink.open_records == 0:
                break
            time.sleep(0.02)
        end, rows = time.monotonic(), run.sink.rows_written
    assert run.done() == len(published), "not every record was written"
    assert first is not None
    rate = (rows - first[1]) / (end - first[0])
    RESULTS[concurrency] = rate
    load = os.getloadavg()[0]
    print(
        f"\nsink concurrency {concurrency:4d}: {rate:7.0f} rows/s "
        f"({rate / 2:6.0f} predictions/s), {rows} rows, load average {load:.1f}"
    )
    assert group_lag(env, group) == 0, "offsets not committed on shutdown"
    if len(RESULTS) == len(CONCURRENCY):
        best = max(RESULTS, key=RESULTS.__getitem__)
        print(f"best: {RESULTS[best]:.0f} rows/s at concurrency {best}")
