"""bench.stats: percentile, summaries, throughput, stage breakdown (no servers)."""

from __future__ import annotations

import pytest

from bench.stats import (
    latency_summary,
    median_at,
    paired_ratios,
    percentile,
    ratio,
    stage_breakdown,
    steady_rate,
    summarize,
    throughput,
)


def test_percentile_nearest_rank() -> None:
    vals = list(range(1, 101))  # 1..100
    assert percentile(vals, 50) == 50
    assert percentile(vals, 95) == 95
    assert percentile(vals, 99) == 99
    assert percentile(vals, 100) == 100
    assert percentile(vals, 0) == 1
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_percentile_unsorted_and_small() -> None:
    assert percentile([30, 10, 20], 50) == 20
    assert percentile([30, 10, 20], 99) == 30
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_summarize_median_and_spread() -> None:
    s = summarize([10.0, 12.0, 8.0])
    assert s["n"] == 3 and s["median"] == 10.0
    assert s["min"] == 8.0 and s["max"] == 12.0
    assert s["spread_pct"] == 40.0
    assert summarize([])["median"] is None


def test_latency_summary() -> None:
    s = latency_summary([float(v) for v in range(1, 201)])
    assert (s["p50_ms"], s["p95_ms"], s["p99_ms"], s["max_ms"]) == (100, 190, 198, 200)
    assert s["count"] == 200


def test_throughput_and_ratio() -> None:
    assert throughput(100, 1000.0, 3000.0) == 50.0
    assert throughput(100, 1000.0, 1000.0) is None
    assert throughput(0, 0.0, 10.0) is None
    assert ratio(40.0, 50.0) == 0.8
    assert ratio(None, 50.0) is None
    assert ratio(1.0, 0.0) is None


def test_steady_rate_leaves_out_the_fill_and_the_drain() -> None:
    # 100 completions: the first 10 trickle in over 2 s while the pipeline fills, the
    # middle 80 come at 50/s, the last 10 drain over 2 s.
    fill = [i * 200.0 for i in range(10)]
    middle = [2000.0 + i * 20.0 for i in range(80)]
    drain = [3600.0 + i * 200.0 for i in range(1, 11)]
    times = fill + middle + drain
    assert throughput(len(times), 0.0, max(times)) == 100 / 5.6
    # Indexes 10..89 of the sorted times: 79 intervals of 20 ms.
    assert steady_rate(reversed(times)) == 79 / 1.58
    assert steady_rate(times, trim=0.0) == 99 / 5.6


def test_steady_rate_needs_enough_completions_and_a_span() -> None:
    assert steady_rate([float(i) for i in range(19)]) is None
    assert steady_rate([5.0] * 50) is None
    with pytest.raises(ValueError):
        steady_rate([1.0, 2.0], trim=0.5)


def test_median_at_and_paired_ratios() -> None:
    out = {"pipeline": {"saturation": {"images_per_s": {"median": 40.0}}}}
    assert median_at(out, "pipeline", "saturation", "images_per_s") == 40.0
    assert median_at(out, "pipeline", "missing", "images_per_s") is None
    assert median_at(None, "x") is None
    bursts = [{"per_s": 30.0}, {"per_s": None}, {"per_s": 45.0}]
    assert paired_ratios(bursts, "per_s", [60.0, 50.0, None]) == [0.5]


def test_stage_breakdown_hops() -> None:
    rows = [
        {
            "produced_at": 0,
            "stored_at": 100,
            "stage_ms": {"decode": 10, "infer": 60, "postprocess": 70},
        },
        {
            "produced_at": 0,
            "stored_at": 200,
            "stage_ms": {"decode": 20, "infer": 120, "postprocess": 150},
        },
        {"produced_at": 0, "stored_at": 50, "stage_ms": {}},  # no trace: only counted end to end
    ]
    b = stage_breakdown(rows, ["decode", "infer", "postprocess"])
    assert list(b) == [
        "produced->decode",
        "decode->infer",
        "infer->postprocess",
        "postprocess->stored",
    ]
    assert b["produced->decode"]["count"] == 2
    assert b["decode->infer"]["mean_ms"] == 75.0
    assert b["postprocess->stored"]["p50_ms"] == 30.0


def test_cpu_component_names_and_diff() -> None:
    from bench.cpu import CpuMeter, Snapshot, component

    assert component("kafka-2") == "kafka"
    assert component("relay-decode-1") == "relay"
    assert component("psink-1") == "psink"
    assert component("jit-cassandra-3") == "jit"
    a = Snapshot(0.0, {"kafka-1": 1.0, "kafka-2": 2.0, "tsink-1": 0.5}, 1.0, (10.0, 20.0))
    b = Snapshot(2.0, {"kafka-1": 1.5, "kafka-2": 2.5, "tsink-1": 1.5}, 1.5, (13.0, 24.0))
    meter = CpuMeter({})
    d = meter.diff(a, b, items=100)
    assert d["cpu_s"] == {"bench": 0.5, "kafka": 1.0, "tsink": 1.0}
    assert d["cpu_ms_per_item"]["kafka"] == 10.0
    assert d["machine_busy_pct"] == 75.0
    assert d["ours_pct_of_machine"] == 62.5
    assert d["others_pct_of_machine"] == 12.5

    meter.background = {"kafka": 0.25}  # 0.25 CPU s per s of others' work over 2 s
    d = meter.diff(a, b, items=100)
    assert d["cpu_s"]["kafka"] == 0.5
    assert d["cpu_s_before_background_subtraction"]["kafka"] == 1.0


def test_jit_cpu_of_this_process_is_a_part_of_its_cpu() -> None:
    import os

    from bench.cpu import jit_cpu_s, process_cpu_s

    # Not a JVM: no compiler threads; a pid that is gone reads as 0.
    assert jit_cpu_s(os.getpid()) == 0.0
    assert jit_cpu_s(2**22 + 1) == 0.0
    assert (process_cpu_s(os.getpid()) or 0.0) >= 0.0
