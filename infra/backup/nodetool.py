"""nodetool, run from the cassandra-all jars the local nodes run on, over a node's local JMX.

NodeTool needs the Java 17 module flags the server uses (else it dies with an
IllegalAccessException on sun.nio.ch.DirectBuffer), and a logback config of its own:
without one, logback's default prints DEBUG lines on stdout. A short-lived client JVM:
serial GC and C1 only, so one call costs well under a second on this machine.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from infra.backup.manifest import BackupError
from infra.local import maven
from infra.local.cassandra_node import JAVA17_MODULE_FLAGS
from infra.local.jvm import find_java_home
from infra.local.topology import NodeSpec

log = logging.getLogger(__name__)

MAIN_CLASS = "org.apache.cassandra.tools.NodeTool"
QUIET_LOGBACK = """<?xml version="1.0" encoding="UTF-8"?>
<configuration><root level="WARN"/></configuration>
"""
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Nodetool:
    java: Path
    lib: Path
    logback: Path

    @classmethod
    def locate(cls, work_dir: Path) -> Nodetool:
        """The JDK 17 and the cached cassandra-all classpath (resolved by `infra up`)."""
        home = find_java_home()
        lib = maven.ensure(maven.CASSANDRA_ARTIFACTS, home)
        work_dir.mkdir(parents=True, exist_ok=True)
        logback = work_dir / "nodetool-logback.xml"
        if not logback.is_file() or logback.read_text() != QUIET_LOGBACK:
            logback.write_text(QUIET_LOGBACK)
        return cls(home / "bin" / "java", lib, logback)

    def command(self, node: NodeSpec, args: list[str]) -> list[str]:
        return [
            str(self.java),
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            *JAVA17_MODULE_FLAGS,
            f"-Dlogback.configurationFile={self.logback}",
            "-cp",
            f"{self.lib}/*",
            MAIN_CLASS,
            "-h",
            "127.0.0.1",
            "-p",
            str(node.ports["jmx"]),
            *args,
        ]

    def run(self, node: NodeSpec, *args: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
        """stdout of `nodetool <args>` on node; BackupError with its output if it fails."""
        t0 = time.monotonic()
        try:
            res = subprocess.run(
                self.command(node, list(args)),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BackupError(
                f"nodetool {' '.join(args)} on {node.name} did not finish in {timeout_s:.0f}s"
            ) from exc
        log.debug(
            "nodetool %s on %s: rc %d in %.1fs",
            " ".join(args),
            node.name,
            res.returncode,
            time.monotonic() - t0,
        )
        if res.returncode != 0:
            out = (res.stderr.strip() or res.stdout.strip()).splitlines()
            tail = " | ".join(ln for ln in out[-5:] if ln.strip())
            raise BackupError(
                f"nodetool {' '.join(args)} on {node.name} failed (exit {res.returncode}): {tail}"
            )
        return res.stdout
