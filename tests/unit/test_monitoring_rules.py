"""The alert rules, the Prometheus config and the scrape targets, checked with promtool.

promtool comes with Debian's `prometheus` package (infra/setup-system.sh installs it).
Outside CI a machine without it skips the promtool tests; in CI (CI=true) they fail,
so a missing install step cannot hide behind a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestration import monitor, service_facts, targets

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "orchestration" / "monitoring"
DOC = ROOT / "docs" / "metrics.md"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("promtool missing in CI: infra/setup-system.sh must install 'prometheus'")
        pytest.skip("promtool not installed (bash infra/setup-system.sh installs it)")
    return path


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules() -> None:
    res = _run([_promtool(), "check", "rules", str(monitor.ALERT_RULES)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 7 rules found" in res.stdout


def test_promtool_rule_unit_tests() -> None:
    tests = MONITORING / "tests"
    files = sorted(p.name for p in tests.glob("*_test.yml"))
    assert files, "no rule unit tests"
    res = _run([_promtool(), "test", "rules", *files], cwd=tests)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_rule_unit_tests_catch_a_wrong_expectation(tmp_path: Path) -> None:
    """The rule tests can fail: a copy expecting the wrong stage is rejected."""
    src = (MONITORING / "tests" / "alerts_test.yml").read_text()
    wrong = src.replace("{severity: critical, stage: infer}", "{severity: critical, stage: decode}")
    assert wrong != src
    (tmp_path / "alerts.yml").write_text(monitor.ALERT_RULES.read_text())
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "wrong_test.yml").write_text(wrong)
    res = _run([_promtool(), "test", "rules", "wrong_test.yml"], cwd=tmp_path / "t")
    assert res.returncode != 0
    assert "StageStalled" in res.stdout + res.stderr


def test_every_alert_of_the_issue_has_a_rule_and_a_test() -> None:
    rules = monitor.ALERT_RULES.read_text()
    tests = (MONITORING / "tests" / "alerts_test.yml").read_text()
    for name in (
        "StageStalled",
        "DeadLetterRateHigh",
        "ConsumerLagGrowing",
        "SinkCannotWrite",
        "KafkaBrokersDown",
        "CassandraNodesDown",
        "ServiceDown",
    ):
        assert f"alert: {name}\n" in rules, name
        assert f"alertname: {name}\n" in tests, name


def test_generated_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    targets_json = targets.write_scrape_targets(
        tmp_path,
        [
            targets.ScrapeTarget(targets.JOB_WORKER, "worker-1", "127.0.0.1:6067"),
            targets.ScrapeTarget(targets.JOB_SINK, "sink-1", "127.0.0.1:9464"),
        ],
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps(monitor.prometheus_config(targets_json, monitor.ALERT_RULES, 2.0)))
    res = _run([_promtool(), "check", "config", str(config)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(targets_json.read_text()) == [
        {"targets": ["127.0.0.1:6067"], "labels": {"job": "stream_worker", "service": "worker-1"}},
        {"targets": ["127.0.0.1:9464"], "labels": {"job": "sink", "service": "sink-1"}},
    ]


def _spec(
    tmp_path: Path,
    name: str,
    argv: list[str],
    env: dict[str, str] | None = None,
    web_ports: list[int] | None = None,
) -> None:
    d = tmp_path / "services"
    d.mkdir(exist_ok=True)
    (d / f"{name}.json").write_text(
        json.dumps({"name": name, "argv": argv, "env": env or {}, "web_ports": web_ports or []})
    )


def test_scrape_targets_from_recorded_service_specs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(service_facts.SINK_METRICS_PORT_ENV, raising=False)
    py = "/x/python"
    _spec(
        tmp_path,
        "stream-workers",
        [py, "-m", "stream_app", "workers", "-n", "2", "--web-port", "31001"],
        web_ports=[31001, 31002],
    )
    _spec(tmp_path, "worker-9", [py, "-m", "stream_app", "worker", "--web-port", "31009"])
    _spec(tmp_path, "worker-x", [py, "-m", "stream_app", "worker"])
    supervised = [
        py,
        "-m",
        "infra.supervisor",
        "--name",
        "sink-1",
        "--",
        py,
        "-m",
        "consumers",
        "sink",
    ]
    _spec(tmp_path, "sink-1", supervised)
    _spec(tmp_path, "sink-2", [py, "-m", "consumers", "sink"], {"PIPELINE_METRICS__PORT": "31005"})
    _spec(tmp_path, "producer", [py, "-m", "producers", "images", "x"])
    (tmp_path / "services" / "broken.json").write_text("{not json")
    got = {t.service: (t.job, t.address) for t in targets.scrape_targets(tmp_path)}
    assert got == {
        "stream-workers-1": ("stream_worker", "127.0.0.1:31001"),
        "stream-workers-2": ("stream_worker", "127.0.0.1:31002"),
        "worker-9": ("stream_worker", "127.0.0.1:31009"),
        "worker-x": ("stream_worker", "127.0.0.1:6066"),
        "sink-1": ("sink", "127.0.0.1:9464"),
        "sink-2": ("sink", "127.0.0.1:31005"),
    }


def test_port_defaults_match_the_services(monkeypatch) -> None:
    from consumers.settings import DEFAULT_PORT, SinkMetricsSettings
    from stream_app.settings import WorkerSettings

    assert service_facts.SINK_METRICS_PORT_DEFAULT == DEFAULT_PORT
    assert WorkerSettings().web_port == service_facts.WORKER_WEB_PORT_DEFAULT
    monkeypatch.delenv(service_facts.SINK_METRICS_PORT_ENV, raising=False)
    assert SinkMetricsSettings().metrics.port == DEFAULT_PORT


def _documented() -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \|", DOC.read_text(), re.M))


def _used(text: str) -> set[str]:
    names = set(re.findall(r"\b((?:torchstream|process)_[a-z_]+)", text))
    # histogram series and counters are documented by their family name
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_alerts_and_dashboard_use_only_documented_metrics() -> None:
    doc = _documented()
    assert len(doc) >= 25
    dash = json.loads((MONITORING / "dashboard.json").read_text())
    exprs = "\n".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    assert len(dash["panels"]) >= 10
    for source, text in (("alerts.yml", monitor.ALERT_RULES.read_text()), ("dashboard", exprs)):
        unknown = _used(text) - doc
        assert not unknown, f"{source} uses undocumented metrics {sorted(unknown)}"
