"""Private files: written atomically and readable by their owner only (mode 0600).

Certificates, keys and passwords all go through `write_private`, so none is ever
visible, even for an instant, with the umask's looser mode, and none is ever half written.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, mode 0600 from the first byte."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)  # O_CREAT's mode is masked by the umask; make it exact
    os.replace(tmp, path)
