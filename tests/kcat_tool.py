"""kcat for the tests: a librdkafka that can log in to Kafka 4.x, and a private config.

Debian 12's kcat links librdkafka 2.0.2, which answers Kafka 4.x's SCRAM challenge
wrongly ("invalid credentials", librdkafka#4895); `kcat_env` then points
LD_LIBRARY_PATH at the newer librdkafka confluent-kafka ships. `kcat_config` writes a
principal's TLS + SCRAM settings to a 0600 `kcat -F` file, so the password is never on
a command line (where `ps` and logs would show it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from infra.security import KafkaAuth

KCAT_MIN_LIBRDKAFKA = (2, 6, 1)


class KcatUnavailable(RuntimeError):
    """No kcat, or none that can log in with SCRAM to this Kafka."""


def kcat_exe() -> str:
    exe = shutil.which("kcat") or shutil.which("kafkacat")
    if exe is None:
        raise KcatUnavailable("kcat is not installed")
    return exe


def kcat_env(tmp_path: Path) -> dict[str, str]:
    """Extra environment for kcat: {} if its librdkafka is new enough, else
    LD_LIBRARY_PATH naming confluent-kafka's (a symlink under `tmp_path`/lib)."""
    out = subprocess.run([kcat_exe(), "-V"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"librdkafka (\d+)\.(\d+)\.(\d+)", out)
    if m and tuple(int(x) for x in m.groups()) >= KCAT_MIN_LIBRDKAFKA:
        return {}
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    if not found:
        raise KcatUnavailable(
            f"kcat's librdkafka is older than 2.6.1 ({out.strip()[-80:]}) and none newer"
        )
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    link = lib / "librdkafka.so.1"
    if not link.is_symlink():
        link.symlink_to(found[0])
    return {"LD_LIBRARY_PATH": str(lib)}


def kcat_config(auth: KafkaAuth | None, path: Path, extra: dict[str, str] | None = None) -> Path:
    """A private `kcat -F` file logging in as `auth` (nothing in plaintext mode), plus
    `extra` librdkafka properties (e.g. KafkaSettings.client_config, which may be secret)."""
    lines = [f"{k}={v}" for k, v in (extra or {}).items()]
    if auth is not None:
        lines += [
            "security.protocol=SASL_SSL",
            f"sasl.mechanism={auth.mechanism}",
            f"sasl.username={auth.principal}",
            f"sasl.password={auth.secret()}",
            f"ssl.ca.location={auth.ca_file}",
        ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def kcat_login_env(
    auth: KafkaAuth | None, tmp_path: Path, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment that makes a plain `kcat ...` command log in as `auth` with `extra`
    properties (KCAT_CONFIG, a private file; plus a newer librdkafka if needed); {} in
    plaintext mode with nothing extra."""
    if auth is None and not extra:
        return {}
    name = auth.principal if auth is not None else "plain"
    conf = kcat_config(auth, tmp_path / f"kcat-{name}.conf", extra)
    return {**(kcat_env(tmp_path) if auth is not None else {}), "KCAT_CONFIG": str(conf)}
