"""`python -m consumers sink|query|api`: the sink process, the result queries, the read API.

Exit codes: 0 ok; 1 query found none of / not all of the asked ids; 2 refused to start
(configuration: consistency check, missing keyspace) or bad arguments; 3 the sink
stopped for a fault no record can fix (Cassandra refuses every write: keyspace or
table dropped, permissions; or a record schema version newer than this sink reads);
4 a query got no answer from Cassandra after its retries (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from consumers import queries
from consumers.api import command as api_command
from consumers.consistency import ConsistencyConfigError
from consumers.metrics import serve_sink_metrics
from consumers.settings import SinkMetricsSettings, SinkSettings
from infra import logs

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m consumers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sink", help="consume predictions and dead letters into Cassandra")
    s.add_argument("--group", help="consumer group id (default: settings sink.group_id)")
    s.add_argument("--concurrency", type=int, help="Cassandra writes in flight")
    s.add_argument("--keyspace", help="Cassandra keyspace (default: settings cassandra.keyspace)")
    s.add_argument("--health-interval", type=float, help="seconds between health lines")

    q = sub.add_parser("query", help="read stored results at the read consistency")
    q.add_argument("image_ids", nargs="*", metavar="IMAGE_ID")
    q.add_argument("--ids-from", metavar="FILE", help="read image ids, one a line ('-': stdin)")
    q.add_argument("--label", help="images whose top-1 label is LABEL")
    q.add_argument("--limit", type=int, default=100, help="rows for --label/--rejections")
    q.add_argument(
        "--rejections",
        action="store_true",
        help="rejections (of the given ids, or the newest ones)",
    )
    q.add_argument("--stats", action="store_true", help="counts by label and reason, newest")
    q.add_argument("--json", action="store_true", help="JSON output for machines")
    q.add_argument("--keyspace", help="Cassandra keyspace (default: settings cassandra.keyspace)")
    api_command.add_parser(sub)
    return p


# -- sink ------------------------------------------------------------------------------
def run_sink(args: argparse.Namespace, settings: SinkSettings) -> int:
    from consumers.sink import Sink, SinkFatalError

    if args.concurrency:
        settings.sink.concurrency = args.concurrency
    if args.keyspace:
        settings.cassandra.keyspace = args.keyspace
    if args.health_interval:
        settings.sink.health_interval_s = args.health_interval
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            log.warning("second %s: exiting without draining", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: draining and committing, then exiting", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("sink settings: %s", settings.masked())
    try:
        sink = Sink(settings, group_id=args.group)
        serve_sink_metrics(sink, SinkMetricsSettings())
        sink.run(stop)
    except ConsistencyConfigError as exc:
        print(f"sink refuses to start: {exc}", file=sys.stderr)
        return 2
    except SinkFatalError as exc:
        print(f"sink stopped: {exc}", file=sys.stderr)
        return 3
    return 0


# -- query -----------------------------------------------------------------------------
def _cell(v: Any, width: int = 40) -> str:
    if isinstance(v, float):
        text = f"{v:.4f}"
    elif isinstance(v, list | dict):
        text = json.dumps(v, separators=(",", ":"))
    else:
        text = "" if v is None else str(v)
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def _ids(args: argparse.Namespace) -> list[str]:
    ids = list(args.image_ids)
    if args.ids_from:
        fh = sys.stdin if args.ids_from == "-" else open(args.ids_from)  # noqa: SIM115
        with fh:
            ids += [line.strip() for line in fh if line.strip()]
    return ids


def run_query(args: argparse.Namespace, settings: SinkSettings) -> int:
    from infra.cassandra_roles import READER, as_role
    from infra.cassandra_session import connect

    ks = args.keyspace or settings.cassandra.keyspace
    ids = _ids(args)
    modes = sum([bool(ids) and not args.rejections, bool(args.label), args.rejections, args.stats])
    if modes != 1:
        print(
            "give exactly one of: IMAGE_ID..., --label, --rejections [IMAGE_ID...], --stats",
            file=sys.stderr,
        )
        return 2
    # The driver logs a dead node's connection errors as WARNINGs with tracebacks; the
    # read profile rides through them, so a user sees only an answer or one error line.
    logging.getLogger("cassandra").setLevel(logging.ERROR)
    from cassandra import DriverException
    from cassandra.cluster import NoHostAvailable
    from cassandra.connection import ConnectionException

    try:
        cluster, session = connect(as_role(settings, READER))  # reads only
        try:
            result, table, code = _query(session, ks, args, ids)
        finally:
            cluster.shutdown()
    except (DriverException, NoHostAvailable, ConnectionException) as exc:
        # Already retried on other hosts (READ_PROFILE) and per page: say why in one line.
        text = " ".join(str(exc).split())
        print(
            f"query failed: Cassandra did not answer: {type(exc).__name__}: {text}", file=sys.stderr
        )
        return 4
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(table)
    return code


def _query(session: Any, ks: str, args: argparse.Namespace, ids: list[str]) -> tuple[Any, str, int]:
    if args.stats:
        st = queries.stats(session, keyspace=ks)
        parts = [
            f"predictions: {st['predictions']}   rejections: {st['rejections']}",
            "",
            render_table(
                [{"label": k, "count": v} for k, v in st["by_label"].items()], ("label", "count")
            ),
            "",
            render_table(
                [{"reason": k, "count": v} for k, v in st["rejections_by_reason"].items()],
                ("reason", "count"),
            ),
            "",
            "newest:",
            render_table(
                st["newest"], ("image_id", "label", "score", "model_name", "processed_at")
            ),
        ]
        return st, "\n".join(parts), 0
    if args.label:
        rows = queries.by_label(session, args.label, keyspace=ks, limit=args.limit)
        return rows, render_table(rows, queries.BY_LABEL_COLUMNS), 0
    cols = ("image_id", "stage", "reason", "error_class", "message", "rejected_at")
    if args.rejections and not ids:
        rows = queries.list_rejections(session, keyspace=ks, limit=args.limit)
        return rows, render_table(rows, cols), 0
    found = queries.lookup(session, ids, keyspace=ks)
    if args.rejections:
        missing = [i for i in ids if i not in found.rejections]
        result = {"rejections": found.rejections, "missing": missing}
        return result, render_table(list(found.rejections.values()), cols), 1 if missing else 0
    # One status per image: an id with rows in both tables shows its newer row only.
    preds, rejs, missing = found.predictions, found.rejections, found.missing
    result = {"predictions": preds, "rejections": rejs, "missing": missing}
    rows = [
        {
            "image_id": i,
            "status": "prediction",
            "label": p["label"],
            "score": p["score"],
            "model": f"{p['model_name']}:{p['model_version']}",
            "detail": p["source"],
        }
        for i, p in preds.items()
    ]
    rows += [
        {
            "image_id": i,
            "status": "rejected",
            "label": "",
            "score": None,
            "model": r["stage"],
            "detail": f"{r['reason']}: {r['message']}",
        }
        for i, r in rejs.items()
    ]
    rows += [{"image_id": i, "status": "missing"} for i in missing]
    table = render_table(rows, ("image_id", "status", "label", "score", "model", "detail"))
    return result, table, 1 if missing else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "api":
        return api_command.run(args)
    settings = SinkSettings()
    logs.configure(settings.log_level if args.command == "sink" else "WARNING")
    if args.command == "sink":
        return run_sink(args, settings)
    return run_query(args, settings)
