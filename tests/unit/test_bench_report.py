"""bench.cli's pure helpers and the printed table (no servers)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.cli import batch_delta, cpu_summary, ratios
from bench.pipeline import batch_summary
from bench.report import print_table


def test_batch_summary_and_delta() -> None:
    health: list[dict[str, Any]] = [
        {
            "stages": [
                {
                    "stage": "infer",
                    "records_in": 40,
                    "batches": 5,
                    "max_batch_size": 16,
                    "images_per_busy_s": 9.0,
                }
            ]
        },
        {"stages": [{"stage": "infer", "records_in": 24, "batches": 3, "max_batch_size": 12}]},
        {"port": 1, "error": "down"},
    ]
    agg = batch_summary(health)
    assert agg["infer"]["records_in"] == 64 and agg["infer"]["mean_batch_size"] == 8.0
    before = {"infer": {"records_in": 16, "batches": 2}}
    d = batch_delta(before, agg)
    assert d["infer"] == {
        "records": 48,
        "batches": 6,
        "mean_batch_size": 8.0,
        "images_per_busy_s": [9.0],
    }


def test_cpu_summary_medians() -> None:
    runs: list[dict[str, Any]] = [
        {"cpu": {"cpu_ms_per_item": {"kafka": 1.0, "worker": 10.0}, "others_pct_of_machine": 20.0}},
        {"cpu": {"cpu_ms_per_item": {"kafka": 3.0, "worker": 12.0}, "others_pct_of_machine": 40.0}},
        {"cpu": None},
    ]
    c = cpu_summary(runs)
    assert c["kafka"] == 2.0 and c["worker"] == 11.0 and c["total"] == 13.0
    assert c["others_pct_of_machine"] == 30.0


def test_ratios_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    out = {
        "model_only": {
            "batch_size": 16,
            "torch_threads": 2,
            "images_per_s": {"n": 1, "median": 10.0, "min": 10.0, "max": 10.0},
            "ms_per_image": {k: {"median": 1.0} for k in ("decode", "infer", "postprocess")},
        },
        "pipeline": {
            "saturation": {
                "images_per_s": {"n": 1, "median": 8.0, "min": 8.0, "max": 8.0},
                "p50_ms": {"median": 100.0},
                "p95_ms": {"median": 200.0},
                "p99_ms": {"median": 300.0},
                "runs": [],
            },
            "half_rate": {
                "rate_per_s": 4.0,
                "images_per_s": {"median": None},
                "p50_ms": {},
                "p95_ms": {},
                "p99_ms": {},
                "runs": [],
            },
            "paired_ratio_over_model_only": {"median": 0.85, "min": 0.8, "max": 0.9},
        },
        "transport": {
            "hops": 3,
            "events_per_s": {"n": 1, "median": 500.0, "min": 500.0, "max": 500.0},
            "p50_ms": {"median": 10.0},
            "p99_ms": {"median": 20.0},
        },
    }
    r = ratios(out)
    assert r["pipeline_over_model_only"] == 0.8
    assert r["pipeline_over_model_only_paired"] == 0.85
    assert r["transport_events_per_s"] == 500.0
    out["ratios"] = r
    print_table(out)
    text = capsys.readouterr().out
    assert "pipeline images/s at saturation" in text and "transport events/s" in text


class _FakeMeter:
    """Snapshots whose differences give the JIT share of each burst in turn."""

    def __init__(self, jit_shares: list[float]) -> None:
        self.shares = jit_shares
        self.i = 0

    def snapshot(self) -> int:
        return self.i

    def diff(self, a: int, b: int, items: int) -> dict[str, Any]:
        share = self.shares[self.i - 1]
        return {
            "cpu_s_before_background_subtraction": {"kafka": 1 - share, "jit": share, "worker": 5.0}
        }


def test_warm_up_stops_once_jit_settles(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from bench.cli import warm_up

    meter = _FakeMeter([0.6, 0.3, 0.1, 0.05])

    def burst(i: int) -> None:
        meter.i = i + 1

    args = argparse.Namespace(warmup_rounds=8, jit_settled=0.15)
    w = warm_up("transport", meter, args, burst)  # type: ignore[arg-type]
    assert w == {
        "bursts": 3,
        "jit_share_per_burst": [0.6, 0.3, 0.1],
        "settled": True,
        "threshold": 0.15,
    }
    meter.i = 0
    args.warmup_rounds = 2
    w = warm_up("transport", meter, args, burst)  # type: ignore[arg-type]
    assert w["bursts"] == 2 and not w["settled"]
    assert "JIT compilation 30%" in capsys.readouterr().out


def test_lag_sampler_keeps_the_largest_lag_per_stage() -> None:
    from bench.cli import max_lag
    from bench.pipeline import LagSampler, lag_by_topic

    assert lag_by_topic({"p.images.raw[0]": 3, "p.images.raw[1]": 2, "x[0]": -1}) == {
        "p.images.raw": 5,
        "x": 0,
    }
    s = LagSampler(kafka=None, app_group="a", sink_group="s", prefix="p.")
    s.record({"p.images.raw": 40, "p.images.decoded": 2, "p.images.predictions": 0})
    s.record({"p.images.raw": 10, "p.images.decoded": 9, "p.images.inferred": 1})
    assert s.summary() == {
        "max_lag": {"decode": 40, "infer": 9, "postprocess": 1, "sink": 0},
        "samples": 2,
        "every_s": 1.0,
    }
    runs: list[dict[str, Any]] = [
        {"lag": {"max_lag": {"decode": 40, "infer": 9}}},
        {"lag": {"max_lag": {"decode": 20, "infer": 3}}},
        {},
    ]
    assert max_lag(runs) == {"decode": 30, "infer": 6}


def test_lag_sampler_samples_at_most_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.pipeline as bp

    t = [0.0]
    s = bp.LagSampler(
        kafka=None, app_group="a", sink_group="s", prefix="p.", every_s=1.0, clock=lambda: t[0]
    )
    calls: list[float] = []
    monkeypatch.setattr(s, "record", lambda lags: calls.append(t[0]))
    monkeypatch.setattr(bp.groups, "group_lag", lambda *a, **k: {"partitions": {}})
    for now in (0.0, 0.3, 0.9, 1.0, 1.5, 2.2):
        t[0] = now
        s.maybe_sample()
    assert calls == [0.0, 1.0, 2.2]
