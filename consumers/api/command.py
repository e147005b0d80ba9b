"""`python -m consumers api`: argument parsing and the entry point of the read API.

Exit codes: 0 stopped by a signal; 2 refused to start (bad settings, unsafe plain HTTP,
unreadable token or certificate files, Cassandra unreachable at start).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pydantic import ValidationError

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    a = sub.add_parser("api", help="serve the HTTPS read API and the live page")
    a.add_argument("--host", help="listen address (default: settings api.host, 127.0.0.1)")
    a.add_argument(
        "--port", type=int, help="listen port (default: settings api.port, 8443; 0: any)"
    )
    a.add_argument("--keyspace", help="Cassandra keyspace (default: settings cassandra.keyspace)")


def run(args: argparse.Namespace) -> int:
    from cassandra.cluster import NoHostAvailable

    from consumers.api.app import serve
    from consumers.api.settings import ApiSettings
    from infra import logs

    try:
        settings = ApiSettings()
        if args.host:
            settings.api.host = args.host
        if args.port is not None:
            settings.api.port = args.port
        if args.keyspace:
            settings.cassandra.keyspace = args.keyspace
        # Re-validate: --host may turn an allowed plain-HTTP setting into an unsafe one.
        settings.api = type(settings.api).model_validate(settings.api.model_dump())
    except (ValidationError, ValueError) as exc:
        print(f"api refuses to start: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    log.info("api settings: %s", settings.masked())
    try:
        return serve(settings)
    except (OSError, ValueError, NoHostAvailable) as exc:
        print(f"api refuses to start: {exc}", file=sys.stderr)
        return 2
