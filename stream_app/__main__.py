"""`python -m stream_app worker|workers|benchmark`.

  worker                 one faust worker running the configured stages
      --web-port N       its web endpoint (health view at /health/)
      --stages a,b       subset of decode,infer,postprocess
  workers -n N           N worker processes on ports web_port .. web_port+N-1,
                         restarted with backoff when they die (exit 75 "send
                         failed" and 76 "a stage stalled" are restartable); after
      --max-crashes K    crashes in a row (PIPELINE_SUPERVISOR__MAX_CRASHES, 5)
                         it logs CRITICAL and exits 1; SIGTERM/SIGINT stop them all
  benchmark              per-stage throughput on this machine (no Kafka)

Settings come from the environment (PIPELINE_..., see stream_app/settings.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from stream_app.settings import StreamSettings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["benchmark"]:  # its own options: see stream_app/benchmark.py
        from stream_app.benchmark import main as bench

        bench(argv[1:])
        return 0
    ap = argparse.ArgumentParser(
        prog="python -m stream_app",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="run one stream worker")
    w.add_argument("--web-port", type=int)
    w.add_argument("--stages", help="comma-separated subset of decode,infer,postprocess")
    ws = sub.add_parser("workers", help="run and supervise N stream workers")
    ws.add_argument("-n", type=int, default=2)
    ws.add_argument("--web-port", type=int, help="first worker's port (default: settings)")
    ws.add_argument("--max-crashes", type=int, help="give up after K crashes in a row")
    sub.add_parser("benchmark", help="measure per-stage throughput (--help for options)")
    args = ap.parse_args(argv)

    settings = StreamSettings()
    if args.cmd == "worker":
        if args.stages:
            stages = tuple(x.strip() for x in args.stages.split(",") if x.strip())
            unknown = set(stages) - {"decode", "infer", "postprocess"}
            if unknown or not stages:
                ap.error(f"--stages: unknown stage(s) {sorted(unknown)}")
            current = settings.stream.worker
            settings.stream.worker = current.model_copy(update={"stages": stages})
        if settings.stream.infer.torch_threads > 1:
            # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning.
            # On a shared 2-core box spinning cut 2-thread inference to ~1-6 images/s;
            # passive waiting gave ~17 (docs/stream_app.md). Explicit settings win.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from stream_app.worker import run_worker

        return run_worker(settings, args.web_port)
    from infra.supervisor import SupervisorSettings
    from stream_app.supervisor import run_workers

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    port = args.web_port or settings.stream.worker.web_port
    sup = SupervisorSettings()
    if args.max_crashes:
        sup.max_crashes = args.max_crashes
    return run_workers(args.n, port, sup)


if __name__ == "__main__":
    sys.exit(main())
