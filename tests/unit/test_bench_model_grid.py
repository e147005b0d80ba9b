"""bench's model-only grid, today's-path settings and the old/new ratios (no servers)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from bench import paths
from bench.cli import ratios
from bench.model_only import Layout, Variant, choose_best, grid, layout_from, runtime_variants
from bench.report import print_table


def _cell(label: str, rate: float | None, cpu: float = 30.0) -> dict[str, Any]:
    return {
        "label": label,
        "layout": {},
        "images_per_s": {"median": rate},
        "cpu_ms_per_image": {"median": cpu},
    }


def test_grid_skips_layouts_with_more_threads_than_cores() -> None:
    v = [Variant("eager"), Variant("frozen")]
    keep, skipped = grid((1, 2), (1, 2), (1, 16), v, cores=2)
    assert {(x.processes, x.threads) for x in keep} == {(1, 1), (1, 2), (2, 1)}
    assert len(keep) == 3 * 2 * 2
    assert [s["layout"] for s in skipped] == ["eager p2 t2 b1", "eager p2 t2 b16"] + [
        "frozen p2 t2 b1",
        "frozen p2 t2 b16",
    ]
    assert all(s["reason"] == "4 threads > 2 cores" for s in skipped)


def test_choose_best_takes_the_fastest_and_breaks_ties_on_cpu() -> None:
    cells = [_cell("a", 20.0), _cell("b", 31.0, cpu=40.0), _cell("c", 31.0, cpu=33.0)]
    assert choose_best(cells)["label"] == "c"
    assert choose_best([_cell("x", None), _cell("y", 5.0)])["label"] == "y"
    with pytest.raises(ValueError, match="no layout"):
        choose_best([_cell("x", None)])


def test_layout_round_trips_through_the_json() -> None:
    lay = Layout(2, 1, 4, Variant("frozen+cl", (("PIPELINE_STREAM__MODEL__RUNTIME", "frozen"),)))
    assert layout_from(lay.as_dict()) == lay
    assert lay.label == "frozen+cl p2 t1 b4"


def test_runtime_variants_follow_the_stream_app_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from stream_app.settings import ModelSettings

    variants = runtime_variants()
    assert variants[0].env == ()  # the environment's own settings, first
    assert len({v.name for v in variants}) == len(variants)
    if "runtime" not in ModelSettings.model_fields:
        return
    eager = dict(next(v for v in variants if v.name == "eager").env or ())
    if eager:
        assert eager["PIPELINE_STREAM__MODEL__RUNTIME"] == "eager"
    monkeypatch.setenv("PIPELINE_STREAM__MODEL__RUNTIME", "eager")
    monkeypatch.setenv("PIPELINE_STREAM__MODEL__CHANNELS_LAST", "false")
    again = runtime_variants()
    assert again[0] == Variant("eager") and "eager" not in [v.name for v in again[1:]]


def test_old_path_env_is_the_agreement_checks_today(monkeypatch: pytest.MonkeyPatch) -> None:
    agreement = pytest.importorskip("stream_app.agreement")
    from stream_app.settings import StreamSettings

    for k in [k for k in os.environ if k.startswith("PIPELINE_STREAM__")]:
        monkeypatch.delenv(k)
    for k, v in paths.OLD_PATH_ENV.items():
        monkeypatch.setenv(k, v)
    s = StreamSettings().stream
    today = agreement.TODAY
    assert s.model == today.model and s.decode == today.decode and s.infer == today.infer


def test_parse_env() -> None:
    assert paths.parse_env("PIPELINE_A=1, PIPELINE_B=x=y,") == {
        "PIPELINE_A": "1",
        "PIPELINE_B": "x=y",
    }
    with pytest.raises(ValueError):
        paths.parse_env("OTHER=1")
    with pytest.raises(ValueError):
        paths.parse_env("PIPELINE_A")


def test_new_over_old_faust_and_agreement_in_ratios_and_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sat = lambda rate, worker: {  # noqa: E731
        "images_per_s": {"n": 1, "median": rate, "min": rate, "max": rate},
        "steady_images_per_s": {"n": 1, "median": rate + 5, "min": rate + 5, "max": rate + 5},
        "cpu_ms_per_image": {"kafka": 15.0, "worker": worker, "total": 15.0 + worker},
    }
    out: dict[str, Any] = {
        "model_only": {
            "label": "frozen+cl p2 t1 b1",
            "batch_size": 1,
            "torch_threads": 1,
            "images_per_s": {"n": 1, "median": 50.0, "min": 50.0, "max": 50.0},
            "ms_per_image": {k: {"median": 1.0} for k in ("decode", "infer", "postprocess")},
            "grid": {
                "images": 32,
                "cells": [_cell("eager p1 t1 b16", 19.0), _cell("frozen+cl p2 t1 b1", 50.0)],
                "skipped": [],
                "failed": [],
            },
        },
        "pipeline_old": {"saturation": sat(20.0, 45.0)},
        "pipeline": {
            "saturation": {
                **sat(44.0, 20.0),
                "p50_ms": {"median": 1.0},
                "p95_ms": {"median": 2.0},
                "p99_ms": {"median": 3.0},
            },
            "half_rate": {
                "rate_per_s": 22.0,
                "images_per_s": {"median": 21.0},
                "p50_ms": {"median": 1.0},
                "p95_ms": {"median": 2.0},
                "p99_ms": {"median": 3.0},
            },
        },
        "transport": {
            "hops": 3,
            "events_per_s": {"median": 2000.0},
            "p50_ms": {"median": 50.0},
            "p99_ms": {"median": 90.0},
        },
        "transport_faust": {
            "workers": 2,
            "events_per_s": {"median": 500.0},
            "p50_ms": {"median": 100.0},
            "p99_ms": {"median": 300.0},
        },
        "agreement": {
            "images": 576,
            "agreeing": 575,
            "fraction": 0.99826,
            "bar": 0.995,
            "meets_bar": True,
            "differing": [
                {"image": "r0/coins.png/full", "today": {"label": "a"}, "new": {"label": "b"}}
            ],
        },
    }
    r = ratios(out)
    assert r["pipeline_new_over_old"] == 2.2
    assert r["pipeline_over_model_only"] == 0.88
    assert r["pipeline_new_over_old_steady"] == 1.96  # 49 / 25
    assert r["pipeline_steady_over_model_only"] == 0.98
    assert r["transport_faust_over_relay"] == 0.25
    assert r["agreement_fraction"] == 0.99826
    out["ratios"] = r
    print_table(out)
    text = capsys.readouterr().out
    assert "best layout: frozen+cl p2 t1 b1" in text
    assert "pipeline new / today's path: 2.2 end to end, 1.96 steady (goal >= 2.0)" in text
    assert "pipeline steady / model-only: 0.98" in text
    assert "steady images/s (middle 80 %)" in text
    assert "r0/coins.png/full: a -> b" in text
    assert "0.25 x the relay processes'" in text
    assert "today's   new" in text and "worker" in text


def test_model_steps_change_one_thing_at_a_time() -> None:
    from bench.model_steps import steps

    plan = steps(old_batch=4, new_batch=1)
    assert plan[0][1] == paths.OLD_PATH_ENV and plan[0][2] == 4
    parents = [0, 1, 2, 3, 4, 4]  # the last two branch off the defaults (step 4)
    for (_, env_b, b_b), parent in zip(plan[1:], parents, strict=True):
        _, env_a, b_a = plan[parent]
        changed = {k for k in {*env_a, *env_b} if env_a.get(k) != env_b.get(k)}
        assert len(changed) + (b_a != b_b) == 1
