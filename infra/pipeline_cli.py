"""`python -m infra pipeline up|down|status`: the pipeline's services in the background.

For exploring: with the clusters up, `pipeline up` starts N stream workers and the sink
and waits until their consumer groups hold partitions; then publish with `producers` and
look with `consumers query`. Services get the caller's PIPELINE_* environment.

Everything runs supervised (infra/services.py `pipeline_specs`): a worker or sink that
dies is restarted with backoff. `status` shows every worker's stages (in, out, dead
letters by reason, oldest unacked input, lag, last progress, STALLED) and each sink's
process, and exits 1 when any stage is stalled or any service is down
(infra/pipeline_status.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from infra import groups, monitor, pipeline_status
from infra.kafka_retry import KafkaCallFailed
from infra.services import Services, pipeline_specs
from infra.settings import PipelineSettings

# The services' own defaults (stream_app.settings, consumers.settings); a unit test
# keeps these in step. Read from the same variables so overrides apply here too.
STREAM_APP_ID_DEFAULT = "torchstream"
SINK_GROUP_DEFAULT = "vision-sink"


def stream_group() -> str:
    return os.environ.get("PIPELINE_STREAM__WORKER__APP_ID", STREAM_APP_ID_DEFAULT)


def sink_group() -> str:
    return os.environ.get("PIPELINE_SINK__GROUP_ID", SINK_GROUP_DEFAULT)


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
        for name in set(services.names()) - {s.name for s in specs}:
            services.forget(name)  # a stopped service of an older layout: not ours to report
        for spec in specs:
            services.start(spec)
        monitor.write_scrape_targets(run_dir)  # a running Prometheus picks them up
        kafka = PipelineSettings().kafka
        try:
            groups.wait_for_group(kafka, sink_group(), args.sinks, timeout_s=args.timeout)
            groups.wait_for_group(kafka, stream_group(), args.workers, timeout_s=args.timeout)
        except (TimeoutError, KafkaCallFailed) as exc:  # KafkaCallFailed: one line
            for st in services.status():
                print(
                    f"--- {st.name} ({st.state}) {st.log}\n{services.tail(st.name, 15)}",
                    file=sys.stderr,
                )
            print(f"error: pipeline not ready: {exc}", file=sys.stderr)
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
