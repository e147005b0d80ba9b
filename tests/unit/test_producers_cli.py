"""`python -m producers`: commands, JSON summary, exit codes, signals.

No servers: PIPELINE_PRODUCER__CLIENT_OVERRIDES points librdkafka at its in-process mock cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from producers.cli import main
from producers.imaging import encode

MOCK = json.dumps({"test.mock.num.brokers": 3})
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def mock_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_PRODUCER__CLIENT_OVERRIDES", MOCK)


def _summary(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def test_images_publishes_by_content_and_reports_skips(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.dat").write_bytes(encode(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    (tmp_path / "b.webp").write_bytes(encode(np.ones((8, 8, 3), np.uint8), "WEBP"))
    (tmp_path / "readme.png").write_text("hello")
    out = tmp_path / "delivered.jsonl"
    code = main(["images", str(tmp_path), "--json", "--no-progress", "--delivered-out", str(out)])
    s = _summary(capsys)
    assert code == 3 and s["exit_code"] == 3
    assert (s["delivered"], s["failed"], s["skipped"]) == (2, 0, 1)
    assert s["skip_reasons"] == {"not-an-image": 1}
    assert s["skips"][0]["source"].endswith("readme.png")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {Path(r["source"]).name for r in rows} == {"a.dat", "b.webp"}
    assert all(len(r["image_id"]) == 64 and r["offset"] >= 0 for r in rows)


def test_images_all_good_exits_zero_with_text_summary(tmp_path: Path, capsys) -> None:
    f = tmp_path / "x.jpg"
    f.write_bytes(encode(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    assert main(["images", str(f), "--id", "cam-1/0001", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "delivered 1, failed 0, skipped 0" in out and "images/s" in out


def test_id_needs_exactly_one_file(tmp_path: Path, capsys) -> None:
    for n in range(2):
        (tmp_path / f"{n}.jpg").write_bytes(encode(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    assert main(["images", str(tmp_path), "--id", "x", "--no-progress"]) == 2
    assert "--id needs exactly one" in capsys.readouterr().err


def test_invalid_id_is_a_usage_error(tmp_path: Path, capsys) -> None:
    f = tmp_path / "x.jpg"
    f.write_bytes(encode(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    assert main(["images", str(f), "--id", "bad id", "--no-progress"]) == 2
    assert "image id" in capsys.readouterr().err


def test_missing_path_is_skipped_and_named(tmp_path: Path, capsys) -> None:
    assert main(["images", str(tmp_path / "missing.jpg"), "--no-progress"]) == 3
    captured = capsys.readouterr()
    assert "missing.jpg: unreadable" in captured.out
    assert "1 skipped (unreadable)" in captured.err


def test_samples_with_variants_and_corrupt(capsys) -> None:
    assert main(["samples", "--repeat", "2", "--corrupt", "3", "--json", "--no-progress"]) == 0
    s = _summary(capsys)
    assert (s["delivered"], s["failed"], s["skipped"], s["duplicate_ids"]) == (18, 0, 0, 0)
    assert s["bytes"] > 0 and s["images_per_s"] > 0 and s["mb_per_s"] > 0


def test_synthetic(capsys) -> None:
    assert main(["synthetic", "--count", "20", "--size", "64x48", "--json", "--no-progress"]) == 0
    assert _summary(capsys)["delivered"] == 20


def test_bad_size_is_a_usage_error(capsys) -> None:
    assert main(["synthetic", "--count", "2", "--size", "big", "--no-progress"]) == 2
    assert "WxH" in capsys.readouterr().err


def test_bad_env_setting_is_reported(monkeypatch, capsys) -> None:
    monkeypatch.setenv("PIPELINE_PRODUCER__RATE", "-3")
    assert main(["synthetic", "--count", "1", "--no-progress"]) == 2
    assert "invalid settings" in capsys.readouterr().err


def test_sigterm_flushes_and_reports_interrupted(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PIPELINE_PRODUCER__CLIENT_OVERRIDES": MOCK,
        "PIPELINE_PRODUCER__PROGRESS_INTERVAL_S": "0.1",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "producers",
            "synthetic",
            "--count",
            "100000",
            "--size",
            "32x32",
            "--rate",
            "200",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Ready = it reported progress with deliveries (a probe, not a fixed sleep).
        deadline = time.monotonic() + 30
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if " delivered" in line and not line.split(" delivered")[0].endswith(" 0"):
                break
        else:
            pytest.fail("producer reported no deliveries in 30 s")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    s = json.loads(out)
    assert s["interrupted"] is True and s["failed"] == 0
    assert 0 < s["delivered"] < 100000
