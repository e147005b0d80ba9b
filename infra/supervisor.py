"""Keep service processes running: restart with backoff, give up loudly on a crash loop.

`python -m stream_app workers -n N` runs its N workers with this, and any single service
runs under it as `python -m infra.supervisor --name sink -- python -m consumers sink`.
It is pure process management: it knows command lines and exit codes, nothing of Kafka.

What it guarantees (one loop, `Supervisor.run`, read top to bottom):
1. Every child's stdout/stderr passes through the supervisor's stdout line by line,
   prefixed `[name]`; the last lines of each run are kept for the give-up message.
2. A child that exits while the supervisor is not stopping is restarted after a delay
   that doubles with each crash in a row (`backoff_base_s` .. `backoff_max_s`). A run
   longer than `stable_after_s` starts the count again. Exit codes 75 (EX_TEMPFAIL, a
   send failed) and 76 (a stage stalled) are restartable by design, as are signals.
3. After `max_crashes` crashes in a row, or an exit code that says a restart cannot
   help (2 usage, 64 EX_USAGE, 78 EX_CONFIG), it logs CRITICAL with the child's exit
   code and the tail of its output, stops the other children and exits 1.
4. SIGTERM/SIGINT are forwarded to every child; a child alive after `grace_s` gets
   SIGKILL; then the supervisor exits 0.
5. On Linux each child gets PR_SET_PDEATHSIG=SIGTERM: if the supervisor itself is
   SIGKILLed, its children drain and stop instead of running on unsupervised.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Not __name__: run as `python -m infra.supervisor` that is "__main__".
log = logging.getLogger("infra.supervisor")

EX_TEMPFAIL = 75  # a worker's send failed: it stopped without acking, restart it
EX_STALLED = 76  # a stage made no progress past its bound: restart me
EXIT_GAVE_UP = 1
# Exit codes that mean "this command line cannot work": restarting only repeats them.
NOT_RESTARTABLE = {2: "usage error", 64: "EX_USAGE", 78: "EX_CONFIG"}
MEANING = {EX_TEMPFAIL: "send failed (EX_TEMPFAIL)", EX_STALLED: "a stage stalled"}
TAIL_LINES = 30


class SupervisorSettings(BaseSettings):
    """`PIPELINE_SUPERVISOR__*`; the command-line flags override them."""

    model_config = SettingsConfigDict(env_prefix="PIPELINE_SUPERVISOR__", extra="ignore")

    max_crashes: int = Field(default=5, ge=1)  # crashes in a row before giving up
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    # A run at least this long was healthy: the crash count starts again. Longer than a
    # worker's start (~20 s) plus the stall bound (60 s), so a stall loop still counts.
    stable_after_s: float = Field(default=120.0, ge=0)
    grace_s: float = Field(default=20.0, ge=0)  # after SIGTERM, before SIGKILL


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return MEANING.get(code) or NOT_RESTARTABLE.get(code) or f"exit code {code}"


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Child:
    """One supervised command and what the loop knows of its current run.

    Changed only by `Supervisor`: `_spawn` sets proc/started_at and clears the tail,
    `_reap` records the exit and schedules the next start."""

    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    next_start_at: float = 0.0
    crashes_in_a_row: int = 0
    starts: int = 0
    last_exit: int | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    partial: bytes = b""


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when its parent dies. Safe here:
    the supervisor is single-threaded, so fork cannot copy a held lock."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


class Supervisor:
    """Runs children until stopped or a crash loop; `run()` returns the exit code."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        settings: SupervisorSettings,
        out: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not specs:
            raise ValueError("nothing to supervise")
        self.children = [Child(s) for s in specs]
        self.settings = settings
        self.out = out or sys.stdout
        self.clock = clock
        self.stopping = False
        self._sel = selectors.DefaultSelector()
        self._preexec = _pdeathsig()

    # -- the loop ------------------------------------------------------------
    def run(self) -> int:
        for c in self.children:
            self._spawn(c)
        gave_up: Child | None = None
        while not self.stopping and gave_up is None:
            self._pump(0.2)
            for c in self.children:
                if c.proc is not None and c.proc.poll() is not None and self._reap(c):
                    gave_up = c
                    break
                if c.proc is None and not self.stopping and self.clock() >= c.next_start_at:
                    self._spawn(c)
        if gave_up is not None:
            self._give_up(gave_up)
        self._stop_children()
        return EXIT_GAVE_UP if gave_up is not None else 0

    def request_stop(self, signum: int = signal.SIGTERM, _frame: object = None) -> None:
        """Signal handler: stop the loop; `_stop_children` forwards the signal."""
        if not self.stopping:
            log.info(
                "received %s: stopping %d child(ren)",
                signal.Signals(signum).name,
                len(self.children),
            )
        self.stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # -- steps ---------------------------------------------------------------
    def _spawn(self, c: Child) -> None:
        # Unbuffered: a child's last words reach the tail before it dies.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **c.spec.env}
        c.proc = subprocess.Popen(
            c.spec.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=self._preexec,  # noqa: PLW1509 - single-threaded, see _pdeathsig
        )
        assert c.proc.stdout is not None
        os.set_blocking(c.proc.stdout.fileno(), False)
        self._sel.register(c.proc.stdout, selectors.EVENT_READ, c)
        c.started_at = self.clock()
        c.starts += 1
        c.tail.clear()
        c.partial = b""
        log.info("%s started: pid %d (start %d)", c.spec.name, c.proc.pid, c.starts)

    def _reap(self, c: Child) -> bool:
        """Record an exit and schedule the restart; True when it is time to give up."""
        assert c.proc is not None
        code = c.proc.returncode
        self._drain(c)
        c.proc, c.last_exit = None, code
        if self.stopping:
            return False
        ran_s = self.clock() - c.started_at
        c.crashes_in_a_row = 1 if ran_s >= self.settings.stable_after_s else c.crashes_in_a_row + 1
        if code in NOT_RESTARTABLE or c.crashes_in_a_row >= self.settings.max_crashes:
            return True
        s = self.settings
        delay = min(s.backoff_max_s, s.backoff_base_s * 2 ** (c.crashes_in_a_row - 1))
        c.next_start_at = self.clock() + delay
        log.warning(
            "%s exited after %.0fs: %s; restarting in %.1fs (crash %d in a row, giving up at %d)",
            c.spec.name, ran_s, describe_exit(code), delay, c.crashes_in_a_row, s.max_crashes,
        )  # fmt: skip
        return False

    def _give_up(self, c: Child) -> None:
        code = c.last_exit if c.last_exit is not None else -1
        why = (
            f"exit code {code} means a restart cannot help"
            if code in NOT_RESTARTABLE
            else f"{c.crashes_in_a_row} crashes in a row"
        )
        tail = "\n".join(f"    {line}" for line in c.tail) or "    (no output)"
        log.critical(
            "giving up on %s: %s; last exit %d (%s); its last output:\n%s",
            c.spec.name, why, code, describe_exit(code), tail,
        )  # fmt: skip

    def _stop_children(self) -> None:
        alive = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for c in alive:
            assert c.proc is not None
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(signal.SIGTERM)
        deadline = self.clock() + self.settings.grace_s
        while any(c.proc is not None and c.proc.poll() is None for c in alive):
            if self.clock() >= deadline:
                for c in alive:
                    if c.proc is not None and c.proc.poll() is None:
                        log.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing it",
                                    c.spec.name, c.proc.pid, self.settings.grace_s)  # fmt: skip
                        c.proc.kill()
                        c.proc.wait()
                break
            self._pump(0.1)
        for c in self.children:
            if c.proc is not None:
                c.proc.wait()
                self._drain(c)
                c.last_exit, c.proc = c.proc.returncode, None

    # -- output --------------------------------------------------------------
    def _pump(self, timeout: float) -> None:
        """Forward whatever the children wrote, waiting at most `timeout` for it."""
        if not self._sel.get_map():
            time.sleep(timeout)
            return
        for key, _ in self._sel.select(timeout):
            self._read(key.data)

    def _read(self, c: Child) -> bool:
        """Forward complete lines; False at end of file (the pipe is then closed)."""
        assert c.proc is not None and c.proc.stdout is not None
        try:
            chunk = os.read(c.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return True
        if not chunk:
            self._sel.unregister(c.proc.stdout)
            c.proc.stdout.close()
            if c.partial:
                self._emit(c, c.partial)
                c.partial = b""
            return False
        lines = (c.partial + chunk).split(b"\n")
        c.partial = lines.pop()
        for line in lines:
            self._emit(c, line)
        return True

    def _drain(self, c: Child) -> None:
        """Read what an exited child left in its pipe (grandchildren may hold it open:
        stop at the first empty read rather than waiting for end of file)."""
        assert c.proc is not None
        stdout = c.proc.stdout
        if stdout is None or stdout.closed:
            return
        while True:
            try:
                if not self._read(c):
                    return
            except BlockingIOError:
                break
            if not self._sel.select(0):
                break
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(stdout)
        stdout.close()
        if c.partial:
            self._emit(c, c.partial)
            c.partial = b""

    def _emit(self, c: Child, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        c.tail.append(line)
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.out.write(f"[{c.spec.name}] {line}\n")
            self.out.flush()


# -- `python -m infra.supervisor` ------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m infra.supervisor",
        description="Run one command and restart it when it dies (see the module docstring).",
    )
    ap.add_argument("--name", default=None, help="name in the log (default: the command)")
    ap.add_argument("--max-crashes", type=int, help="give up after this many crashes in a row")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to supervise after --")
    settings = SupervisorSettings()
    if args.max_crashes:
        settings.max_crashes = args.max_crashes
    logging.basicConfig(
        level=os.environ.get("PIPELINE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sup = Supervisor([ChildSpec(args.name or os.path.basename(command[0]), command)], settings)
    sup.install_signal_handlers()
    return sup.run()


if __name__ == "__main__":
    sys.exit(main())
