"""What security costs: the pipeline and the transport measured secure and plaintext, in one run.

`python -m bench.security_cost` (the second half of `make bench`) runs `python -m bench
--only pipeline,transport --no-old-path` twice:

- secure: on the clusters of the run dir (`./.run`, secure by default; started by the
  bench if none runs), as `make bench` measures them;
- plaintext: on a second set of clusters started for this run (PIPELINE_INFRA_INSTANCE=1,
  run dir `.run/plaintext`, PIPELINE_SECURITY__MODE=plaintext), warmed by one unmeasured
  pass first (they start cold, the secure ones have just served `make bench`), then
  measured, then stopped.

It writes `bench/results/<stamp>-security-cost.json` with both runs' figures and the
ratios secure ÷ plaintext (pipeline images/s, transport events/s, CPU per image per
component). Caveat, written in the result: while the plaintext runs, the secure clusters
stay up and idle (a few % of a core), which favours neither side by more than that.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.stats import median_at, ratio
from infra.local.topology import INSTANCE_ENV, cassandra_contact_points, kafka_bootstrap

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = "pipeline,transport"
PLAINTEXT_INSTANCE = "1"
GOAL = 0.9  # issue 13: the secure pipeline keeps >= 0.9 x plaintext


def plaintext_env(run_dir: Path) -> dict[str, str]:
    """The environment that points every client and `infra` command at the second,
    plaintext set of clusters."""
    env = {INSTANCE_ENV: PLAINTEXT_INSTANCE}
    saved = os.environ.get(INSTANCE_ENV)
    os.environ[INSTANCE_ENV] = PLAINTEXT_INSTANCE  # topology reads it at call time
    try:
        env["PIPELINE_KAFKA__BOOTSTRAP_SERVERS"] = kafka_bootstrap(3)
        env["PIPELINE_CASSANDRA__CONTACT_POINTS"] = ",".join(cassandra_contact_points(3))
    finally:
        if saved is None:
            del os.environ[INSTANCE_ENV]
        else:
            os.environ[INSTANCE_ENV] = saved
    env["PIPELINE_RUN_DIR"] = str(run_dir)
    env["PIPELINE_SECURITY__MODE"] = "plaintext"
    return env


def run_bench(tag: str, extra_env: dict[str, str], bench_args: list[str]) -> dict[str, Any]:
    """One `python -m bench` run; returns its result file's contents."""
    before = set(RESULTS.glob(f"*-{tag}*.json"))
    cmd = [sys.executable, "-m", "bench", "--only", SECTIONS, "--no-old-path", "--tag", tag]
    print(f"==> security cost: {tag}: {' '.join(cmd[1:] + bench_args)}", flush=True)
    rc = subprocess.run(cmd + bench_args, env={**os.environ, **extra_env}).returncode
    new = sorted(set(RESULTS.glob(f"*-{tag}*.json")) - before)
    if not new:
        raise RuntimeError(f"bench run {tag!r} wrote no result (exit {rc})")
    result: dict[str, Any] = json.loads(new[-1].read_text())
    result["_file"] = new[-1].name
    result["_exit"] = rc
    return result


def measure_plaintext(env: dict[str, str], bench_args: list[str]) -> dict[str, Any]:
    """The plaintext half: one unmeasured pass, then the measured one, then the
    plaintext clusters are stopped (even when a pass failed).

    Those servers start cold, while the secure ones have just served `make bench`. Warm-up
    bursts alone left their JIT compiler at 26-65 % of their CPU after 20 bursts, so
    secure measured 1.05 x plaintext; after a whole warming pass on both sides it was 0.86 x
    (BENCHMARKS.md, issue 13). KEEP=1 keeps the clusters up between the passes."""
    keep = {**env, "KEEP": "1"}
    try:
        run_bench("cost-plaintext-warm", keep, bench_args)
        return figures(run_bench("cost-plaintext", keep, bench_args))
    finally:
        print("==> security cost: stopping the plaintext clusters", flush=True)
        subprocess.run([sys.executable, "-m", "infra", "down"], env={**os.environ, **env})


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """The figures compared between the modes, from one bench result."""
    sat = (result.get("pipeline") or {}).get("saturation") or {}
    trans = result.get("transport") or {}
    return {
        "pipeline_images_per_s": median_at(sat, "images_per_s"),
        "pipeline_steady_images_per_s": median_at(sat, "steady_images_per_s"),
        "pipeline_cpu_ms_per_image": sat.get("cpu_ms_per_image") or {},
        "transport_events_per_s": median_at(trans, "events_per_s"),
        "transport_cpu_ms_per_event": trans.get("cpu_ms_per_event") or {},
        "incomplete": result.get("incomplete"),
        "file": result.get("_file"),
    }


def compare(secure: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """secure ÷ plaintext for the rates, and secure − plaintext CPU per component."""
    cpu_s, cpu_p = secure["pipeline_cpu_ms_per_image"], plain["pipeline_cpu_ms_per_image"]
    extra = {
        k: round(cpu_s[k] - cpu_p[k], 2)
        for k in sorted(set(cpu_s) & set(cpu_p))
        if isinstance(cpu_s[k], int | float) and isinstance(cpu_p[k], int | float)
    }
    pipe = ratio(secure["pipeline_images_per_s"], plain["pipeline_images_per_s"])
    steady = ratio(secure["pipeline_steady_images_per_s"], plain["pipeline_steady_images_per_s"])
    return {
        "pipeline_secure_over_plaintext": pipe,
        "pipeline_steady_secure_over_plaintext": steady,
        "transport_secure_over_plaintext": ratio(
            secure["transport_events_per_s"], plain["transport_events_per_s"]
        ),
        "pipeline_cpu_ms_per_image_secure_minus_plaintext": extra,
        "goal_pipeline_secure_over_plaintext": GOAL,
        "goal_met": pipe is not None and pipe >= GOAL,
        "goal_met_steady": steady is not None and steady >= GOAL,
    }


def _table(out: dict[str, Any]) -> str:
    s, p, r = out["secure"], out["plaintext"], out["ratios"]
    rows = [
        ("pipeline images/s", s["pipeline_images_per_s"], p["pipeline_images_per_s"],
         r["pipeline_secure_over_plaintext"]),
        ("  steady (middle 80 %)", s["pipeline_steady_images_per_s"],
         p["pipeline_steady_images_per_s"], r["pipeline_steady_secure_over_plaintext"]),
        ("transport events/s", s["transport_events_per_s"], p["transport_events_per_s"],
         r["transport_secure_over_plaintext"]),
    ]  # fmt: skip
    lines = [f"{'':22} {'secure':>10} {'plaintext':>10} {'ratio':>7}"]
    lines += [f"{n:22} {a or 0:>10.1f} {b or 0:>10.1f} {c or 0:>7.3f}" for n, a, b, c in rows]
    lines.append(
        "CPU ms/image, secure - plaintext: "
        + ", ".join(f"{k} {v:+.2f}" for k, v in r["pipeline_cpu_ms_per_image_secure_minus_plaintext"].items())
    )  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.security_cost", description=__doc__)
    p.add_argument("--quick", action="store_true", help="pass --quick to both bench runs")
    p.add_argument("--plaintext-run-dir", default=".run/plaintext")
    args = p.parse_args(argv)
    bench_args = ["--quick"] if args.quick else []
    started = time.time()
    secure = figures(run_bench("cost-secure", {"PIPELINE_SECURITY__MODE": "secure"}, bench_args))
    plain_dir = Path(args.plaintext_run_dir).resolve()
    plain = measure_plaintext(
        plaintext_env(plain_dir), [*bench_args, "--run-dir", str(plain_dir / "bench")]
    )
    out = {
        "started_at": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
        "note": "secure: the run dir's clusters; plaintext: PIPELINE_INFRA_INSTANCE=1 "
        "clusters started for the run and warmed by one unmeasured pass, with the secure "
        "clusters idle beside them",
        "secure": secure,
        "plaintext": plain,
        "ratios": compare(secure, plain),
        "wall_s": round(time.time() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{stamp}-security-cost.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print("\n" + _table(out) + f"\n\nresults: {path}; wall {out['wall_s']:.0f}s")
    return 0 if secure["incomplete"] is None and plain["incomplete"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
