"""`python -m orchestration`: the pipeline's services and the monitor, in the background.

`pipeline up|down|status` (orchestration/pipeline_cli.py) and `monitor
up|down|status|targets` (orchestration/monitor.py), with state under the same run
directory as `python -m infra` (--run-dir, else $PIPELINE_RUN_DIR, else ./.run).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from infra.kafka_retry import KafkaCallFailed
from infra.local import InfraError, resolve_run_dir
from infra.logs import configure_cli
from orchestration import monitor, pipeline_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestration", description=__doc__)
    p.add_argument("--run-dir", help="state dir (default $PIPELINE_RUN_DIR or ./.run)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pipeline_cli.add_parser(sub)
    monitor.add_parser(sub)
    return p


def run(args: argparse.Namespace) -> int:
    run_dir = resolve_run_dir(args.run_dir)
    if args.command == "pipeline":
        return pipeline_cli.run(args, run_dir)
    return monitor.run_cli(args, run_dir)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_cli(args.verbose)
    try:
        return run(args)
    except (InfraError, KafkaCallFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
