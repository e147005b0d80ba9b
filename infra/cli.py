"""`python -m infra`: run the local Kafka and Cassandra clusters, provision and back them up.

The pipeline's own services and the monitor are `python -m orchestration`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence

from infra import compose_security
from infra.backup import cli as backup_cli
from infra.local import CASSANDRA, KAFKA, InfraError, LocalCluster, resolve_run_dir
from infra.local.topology import (
    MAX_NODES,
    cassandra_contact_points,
    kafka_bootstrap,
    node_by_name,
)
from infra.logs import configure_cli
from infra.settings import PipelineSettings

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infra", description=__doc__)
    p.add_argument("--run-dir", help="state dir (default $PIPELINE_RUN_DIR or ./.run)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the clusters (if not running) and provision")
    up.add_argument("--kafka-nodes", type=int, default=MAX_NODES, choices=range(1, 4))
    up.add_argument("--cassandra-nodes", type=int, default=MAX_NODES, choices=range(1, 4))
    up.add_argument("--only", choices=(KAFKA, CASSANDRA), help="start just one cluster")
    up.add_argument("--no-provision", action="store_true", help="skip provisioning")

    down = sub.add_parser("down", help="stop every node this run dir recorded")
    down.add_argument("--wipe", action="store_true", help="also delete the run dir")

    st = sub.add_parser("status", help="show node states")
    st.add_argument("--json", action="store_true", help="one JSON object on stdout")

    pv = sub.add_parser("provision", help="create topics, keyspace and tables")
    pv.add_argument("--only", choices=(KAFKA, CASSANDRA))
    pv.add_argument("--topic-prefix", default="")
    pv.add_argument("--keyspace", default=None)

    for name, text in (
        ("stop-node", "SIGTERM one node"),
        ("kill-node", "SIGKILL one node"),
        ("start-node", "start one node and wait until it serves"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("name", help="kafka-1..3 or cassandra-1..3")

    lg = sub.add_parser("logs", help="print the tail of a node's log")
    lg.add_argument("name")
    lg.add_argument("-n", "--lines", type=int, default=50)
    backup_cli.add_parsers(sub)
    compose_security.add_parsers(sub)
    return p


def _provision(
    args: argparse.Namespace, cluster: LocalCluster, kinds: Sequence[str], allow_missing: bool
) -> None:
    from infra.provision import provision

    settings = _local_settings(cluster)
    report = provision(
        settings,
        kafka=KAFKA in kinds and cluster.node_count(KAFKA) > 0,
        cassandra=CASSANDRA in kinds and cluster.node_count(CASSANDRA) > 0,
        topic_prefix=getattr(args, "topic_prefix", ""),
        keyspace=getattr(args, "keyspace", None),
        allow_missing_schemas=allow_missing,
    )
    for s in report.skipped:
        log.warning("provision skipped %s", s)
    print(f"provisioned: {report.summary()}")


def _local_settings(cluster: LocalCluster) -> PipelineSettings:
    """Settings for this run dir's clusters: their addresses (PIPELINE_INFRA_INSTANCE
    moves them) unless the environment names other servers."""
    settings = PipelineSettings()
    if not os.environ.get("PIPELINE_KAFKA__BOOTSTRAP_SERVERS") and cluster.node_count(KAFKA):
        settings.kafka.bootstrap_servers = kafka_bootstrap(cluster.node_count(KAFKA))
    if not os.environ.get("PIPELINE_CASSANDRA__CONTACT_POINTS") and cluster.node_count(CASSANDRA):
        settings.cassandra.contact_points = cassandra_contact_points(cluster.node_count(CASSANDRA))
    return settings


def _print_status(status: dict) -> None:
    for n in status["nodes"]:
        pid = n["pid"] if n["pid"] is not None else "-"
        print(f"{n['name']:<12} {n['state']:<5} pid {pid!s:<8} {n['address']}")
    print(
        f"kafka brokers: {status['kafka']['brokers']}, "
        f"cassandra nodes up: {status['cassandra']['up_nodes']}"
    )


@contextlib.contextmanager
def _run_dir_env(run_dir_arg: str | None) -> Iterator[None]:
    """While a command runs, `--run-dir X` is X for everything it reads, the secrets and
    the CA too (default <run dir>/secrets and /certs, found through $PIPELINE_RUN_DIR):
    without this, provisioning a secure cluster in X would look for them in ./.run."""
    if not run_dir_arg:
        yield
        return
    saved = os.environ.get("PIPELINE_RUN_DIR")
    os.environ["PIPELINE_RUN_DIR"] = str(resolve_run_dir(run_dir_arg))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PIPELINE_RUN_DIR", None)
        else:
            os.environ["PIPELINE_RUN_DIR"] = saved


def run(args: argparse.Namespace) -> int:
    with _run_dir_env(args.run_dir):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd in backup_cli.COMMANDS:
        return backup_cli.run(args, resolve_run_dir(args.run_dir))
    if cmd in compose_security.COMMANDS:  # docker compose: no local cluster involved
        return compose_security.run(args)
    cluster = LocalCluster(resolve_run_dir(args.run_dir))
    if cmd == "up":
        t0 = time.monotonic()
        kinds = [args.only] if args.only else [KAFKA, CASSANDRA]
        started = cluster.up(args.kafka_nodes, args.cassandra_nodes, only=args.only)
        for kind in kinds:  # the user's now: test sessions will not stop it
            cluster.set_owner(kind, "cli")
        if not args.no_provision:
            _provision(args, cluster, kinds, allow_missing=True)
        word = "up" if started else "already up"
        print(f"cluster {word} in {time.monotonic() - t0:.1f}s (run dir {cluster.run_dir})")
        _print_status(cluster.status())
    elif cmd == "down":
        cluster.down(wipe=args.wipe)
        print("cluster down" + (" and wiped" if args.wipe else ""))
    elif cmd == "status":
        status = cluster.status()
        if args.json:
            print(json.dumps(status))
        else:
            _print_status(status)
    elif cmd == "provision":
        kinds = [args.only] if args.only else [KAFKA, CASSANDRA]
        _provision(args, cluster, kinds, allow_missing=False)
    elif cmd == "stop-node":
        cluster.stop_node(args.name)
    elif cmd == "kill-node":
        cluster.kill_node(args.name)
    elif cmd == "start-node":
        cluster.start_node(args.name)
        print(f"{args.name} up")
    elif cmd == "logs":
        node_by_name(args.name)
        print(cluster.log_tail(args.name, args.lines))
    return 0


# Commands that moved above the services (infra cannot import them): a pointer, not a shim.
MOVED = {
    "pipeline": "python -m orchestration pipeline",
    "monitor": "python -m orchestration monitor",
}


def _command_word(argv: Sequence[str]) -> str | None:
    """The COMMAND of `python -m infra [--run-dir D] [-v] COMMAND ...`."""
    words = list(argv)
    while words:
        word = words.pop(0)
        if word == "--run-dir":
            words = words[1:]
        elif not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    moved = MOVED.get(_command_word(sys.argv[1:] if argv is None else argv) or "")
    if moved is not None:
        print(f"error: this command moved: {moved} ...", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    configure_cli(args.verbose)
    from infra.kafka_retry import KafkaCallFailed
    from infra.provision import ProvisionError

    try:
        return run(args)
    except (InfraError, ProvisionError, KafkaCallFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # e.g. an unknown node name
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
