"""Node processes: spawn detached, pid files, ownership checks, signals, log tails.

A pid is signalled only after /proc/<pid>/cmdline shows it is a java process whose
command line contains our run dir, so a recycled pid is never hit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# Popen objects of children started by this process, so they are reaped (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(cmd: Sequence[str], *, log_path: Path, cwd: Path, env: dict[str, str]) -> int:
    """Start cmd in its own session, stdout+stderr appended to log_path; return its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _children[proc.pid] = proc
    return proc.pid


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        _children.pop(pid, None)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # "pid (comm) S ..." - comm may contain spaces, so split after the last ')'.
    return stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else ""


def is_ours(pid: int | None, marker: str) -> bool:
    """True if pid is a live (non-zombie) java process whose cmdline contains marker."""
    if not pid or pid <= 0:
        return False
    _reap(pid)
    if _state(pid) in ("", "Z", "X"):
        return False
    args = _cmdline(pid)
    if not args or not os.path.basename(args[0]).startswith("java"):
        return False
    return any(marker in a for a in args)


def child_running(pid: int | None) -> bool | None:
    """For a process this process spawned: whether it still runs, from its own exit
    status (exact, unlike /proc checks). None if it is not a child of this process."""
    proc = _children.get(pid) if pid else None
    if proc is None:
        return None
    return proc.poll() is None


def describe(pid: int | None, marker: str) -> str:
    """What the ownership check sees for pid, for error messages."""
    if not pid:
        return "no pid recorded"
    args = _cmdline(pid)
    return (
        f"pid {pid}: state {_state(pid) or 'gone'!r}, argv[0] "
        f"{(args[0] if args else '')!r}, marker {'found' if any(marker in a for a in args) else 'missing'}"
        f", child of this process: {child_running(pid)}"
    )


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def write_pid(pid_file: Path, pid: int) -> None:
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = pid_file.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pid_file)


def signal_pid(pid: int, sig: int, marker: str) -> bool:
    """Send sig to pid if it is ours; return whether it was sent."""
    if not is_ours(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        return True
    return False


def _exiting_or_ours(pid: int, marker: str) -> bool:
    """True while pid is ours or still exiting. An exiting process drops its memory (and
    so its cmdline) before it closes its sockets: it is gone only as a zombie or when
    /proc no longer has it, and only then are its ports free."""
    _reap(pid)
    if _state(pid) in ("", "Z", "X"):
        return False
    return is_ours(pid, marker) or not _cmdline(pid)


def wait_gone(pids: Sequence[int], marker: str, timeout: float) -> list[int]:
    """Poll until every pid has fully exited, or timeout; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if _exiting_or_ours(p, marker)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _exiting_or_ours(p, marker)]
    return alive


def terminate(pids: Sequence[int], marker: str, timeout: float) -> list[int]:
    """SIGTERM pids (ours only), then SIGKILL those still alive after timeout.

    Returns the pids that needed SIGKILL.
    """
    sent = [p for p in pids if signal_pid(p, signal.SIGTERM, marker)]
    stubborn = wait_gone(sent, marker, timeout)
    for p in stubborn:
        log.warning("pid %d did not exit %.0fs after SIGTERM; sending SIGKILL", p, timeout)
        signal_pid(p, signal.SIGKILL, marker)
    wait_gone(stubborn, marker, 10.0)
    return stubborn


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a text file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
    except OSError:
        return ""
    text = data.decode(errors="replace").splitlines()
    return "\n".join(text[-lines:]) if lines > 0 else ""


def rotate(path: Path, max_bytes: int) -> None:
    """Move path to path.1 (replacing it) if it is larger than max_bytes."""
    try:
        if path.stat().st_size > max_bytes:
            path.replace(path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def rss_kib(pid: int) -> int | None:
    """Resident set size of pid in KiB, from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
