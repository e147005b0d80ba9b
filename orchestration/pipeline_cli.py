"""`python -m orchestration pipeline up|down|status`: the pipeline's services in the background.

For exploring: with the clusters up, `pipeline up` starts N stream workers and the sink
and waits until their consumer groups hold partitions; then publish with `producers` and
look with `consumers query`. Services get the caller's PIPELINE_* environment; the group
ids waited for are the ones the services build from it (orchestration/service_facts.py).

Everything runs supervised (orchestration/services.py `pipeline_specs`): a worker or sink
that dies is restarted with backoff. `status` shows every worker's stages (in, out, dead
letters by reason, oldest unacked input, lag, last progress, STALLED) and each sink's
process, and exits 1 when any stage is stalled or any service is down
(orchestration/pipeline_status.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infra.settings import PipelineSettings
from orchestration import pipeline_status
from orchestration.readiness import NotReady, start_and_wait
from orchestration.service_facts import sink_group, stream_group
from orchestration.services import Services, pipeline_specs
from orchestration.targets import write_scrape_targets

TAIL_LINES = 15


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run the stream workers and the sink in the background")
    ps = p.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    up = ps.add_parser("up", help="start the workers and the sink, wait until they are ready")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--sinks", type=int, default=1)
    up.add_argument("--timeout", type=float, default=300.0)
    ps.add_parser("down", help="stop them (SIGTERM: they drain and commit)")
    st = ps.add_parser("status", help="services and per-stage health; exit 1 if stalled or down")
    st.add_argument("--json", action="store_true")


def run(args: argparse.Namespace, run_dir: Path) -> int:
    services = Services(run_dir)
    action = args.pipeline_command
    if action == "up":
        specs = pipeline_specs(workers=args.workers, sinks=args.sinks)
        wanted = {sink_group(): args.sinks, stream_group(): args.workers}
        try:
            start_and_wait(
                services,
                specs,
                PipelineSettings().kafka,
                wanted,
                args.timeout,
                forget_others=True,  # a stopped service of an older layout: not ours to report
                tail_lines=TAIL_LINES,
                on_started=lambda: write_scrape_targets(run_dir),  # a running Prometheus follows
            )
        except NotReady as exc:
            print(exc.tails, file=sys.stderr)
            print(f"error: pipeline not ready: {exc.cause}", file=sys.stderr)
            return 1
        print(f"pipeline up: {args.workers} stream workers, {args.sinks} sink(s), supervised; "
              f"logs in {services.dir}")  # fmt: skip
        print(pipeline_status.render(pipeline_status.collect(services)))
        return 0
    if action == "down":
        services.stop_all()
        print("pipeline down")
        return 0
    report = pipeline_status.collect(services)
    if args.json:
        print(json.dumps(report))
    else:
        print(pipeline_status.render(report))
    return 1 if report["problems"] else 0
