"""Locate a Java 17 runtime (both servers run on it) and check its version."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from infra.local.errors import InfraError

REQUIRED_MAJOR = 17
DEFAULT_JAVA_HOMES = (
    "/usr/lib/jvm/java-17-openjdk-amd64",
    "/usr/lib/jvm/java-17-openjdk-arm64",
    "/usr/lib/jvm/java-17-openjdk",
    "/usr/lib/jvm/temurin-17-jdk-amd64",
)


def parse_major(version_output: str) -> int | None:
    """Major version from `java -version` output ('17.0.15' -> 17, '1.8.0' -> 8)."""
    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not m:
        return None
    major = int(m.group(1))
    if major == 1 and m.group(2):
        return int(m.group(2))
    return major


def java_version(java: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_major(out.stderr + out.stdout)


def find_java_home(env: dict[str, str] | None = None) -> Path:
    """The JDK 17 to use: $PIPELINE_JAVA_HOME, else $JAVA_HOME if it is 17, else the
    usual install paths. Raises InfraError with one clear line otherwise."""
    env = dict(os.environ if env is None else env)
    explicit = env.get("PIPELINE_JAVA_HOME")
    candidates = [explicit] if explicit else [env.get("JAVA_HOME"), *DEFAULT_JAVA_HOMES]
    seen: list[str] = []
    for home in candidates:
        if not home:
            continue
        java = Path(home) / "bin" / "java"
        if not java.exists():
            seen.append(f"{home} (no bin/java)")
            continue
        major = java_version(java)
        if major == REQUIRED_MAJOR:
            return Path(home)
        seen.append(f"{home} (Java {major})")
    raise InfraError(
        f"Java {REQUIRED_MAJOR} not found (Kafka 4 and Cassandra 5.0 both run on it); "
        f"looked at: {', '.join(seen) or 'nothing'}; install openjdk-17-jre-headless "
        f"or set PIPELINE_JAVA_HOME"
    )
