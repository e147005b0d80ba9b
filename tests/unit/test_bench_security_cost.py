"""The security-cost comparison: which clusters each side runs on, and the ratios."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import security_cost


def test_plaintext_env_points_every_client_at_the_second_clusters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIPELINE_INFRA_INSTANCE", raising=False)
    env = security_cost.plaintext_env(tmp_path)
    assert env["PIPELINE_SECURITY__MODE"] == "plaintext"
    assert env["PIPELINE_INFRA_INSTANCE"] == "1"
    assert env["PIPELINE_RUN_DIR"] == str(tmp_path)
    assert (
        env["PIPELINE_KAFKA__BOOTSTRAP_SERVERS"]
        == "127.0.0.1:20092,127.0.0.1:20093,127.0.0.1:20094"
    )
    assert env["PIPELINE_CASSANDRA__CONTACT_POINTS"] == "127.0.0.4,127.0.0.5,127.0.0.6"
    # This process still addresses the first set of clusters afterwards.
    assert "PIPELINE_INFRA_INSTANCE" not in os.environ


def _result(images: float, events: float, cpu: dict[str, float]) -> dict:
    return {
        "pipeline": {
            "saturation": {
                "images_per_s": {"median": images},
                "steady_images_per_s": {"median": images * 1.2},
                "cpu_ms_per_image": cpu,
            }
        },
        "transport": {"events_per_s": {"median": events}, "cpu_ms_per_event": {}},
        "_file": "x.json",
    }


def test_compare_gives_secure_over_plaintext_and_the_extra_cpu() -> None:
    secure = security_cost.figures(_result(27.0, 1500.0, {"kafka": 9.0, "worker": 30.0}))
    plain = security_cost.figures(_result(30.0, 2000.0, {"kafka": 6.0, "worker": 29.5}))
    r = security_cost.compare(secure, plain)
    assert r["pipeline_secure_over_plaintext"] == 0.9
    assert r["pipeline_steady_secure_over_plaintext"] == 0.9
    assert r["goal_met_steady"] is True
    assert r["transport_secure_over_plaintext"] == 0.75
    assert r["pipeline_cpu_ms_per_image_secure_minus_plaintext"] == {"kafka": 3.0, "worker": 0.5}
    assert r["goal_met"] is True
    slower = security_cost.figures(_result(20.0, 1500.0, {}))
    assert security_cost.compare(slower, plain)["goal_met"] is False


def test_a_missing_figure_gives_no_ratio_and_no_goal() -> None:
    empty = security_cost.figures({"incomplete": "TimeoutError: x"})
    plain = security_cost.figures(_result(30.0, 2000.0, {}))
    r = security_cost.compare(empty, plain)
    assert r["pipeline_secure_over_plaintext"] is None and r["goal_met"] is False


def test_the_plaintext_half_warms_then_measures_then_stops_its_clusters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, str]] = []

    def run_bench(tag: str, env: dict[str, str], args: list[str]) -> dict:
        calls.append((tag, env["KEEP"]))
        if tag == "cost-plaintext" and fail:
            raise RuntimeError("bench run 'cost-plaintext' wrote no result (exit 1)")
        return _result(31.0, 1700.0, {"worker": 30.0})

    def subprocess_run(cmd: list[str], env: dict[str, str]) -> None:
        calls.append((" ".join(cmd[1:]), env["PIPELINE_INFRA_INSTANCE"]))

    monkeypatch.setattr(security_cost, "run_bench", run_bench)
    monkeypatch.setattr(security_cost.subprocess, "run", subprocess_run)
    env = {"PIPELINE_INFRA_INSTANCE": "1"}
    fail = False
    assert security_cost.measure_plaintext(env, [])["pipeline_images_per_s"] == 31.0
    stop = ("-m infra down", "1")
    assert calls == [("cost-plaintext-warm", "1"), ("cost-plaintext", "1"), stop]
    calls.clear()
    fail = True
    with pytest.raises(RuntimeError):
        security_cost.measure_plaintext(env, [])
    assert calls[-1] == stop
