"""Logging setup for entry points only; library modules just call getLogger(__name__)."""

from __future__ import annotations

import logging
import sys


def configure(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # The driver and librdkafka wrappers are chatty at INFO.
    logging.getLogger("cassandra").setLevel(logging.WARNING)


def configure_cli(verbose: bool) -> None:
    """The operator CLIs (`python -m infra`, `python -m orchestration`): INFO, or DEBUG with
    -v; the Cassandra driver and Kafka wrappers only say errors unless -v."""
    configure("DEBUG" if verbose else "INFO")
    for noisy in ("cassandra", "kafka"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)
