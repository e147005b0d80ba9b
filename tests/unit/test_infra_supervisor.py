"""infra.supervisor on fake children (tiny Python processes): restart, backoff, give-up."""

from __future__ import annotations

import io
import logging
import os
import signal
import sys
import time

import pytest

from infra.supervisor import (
    EX_STALLED,
    EX_TEMPFAIL,
    EXIT_GAVE_UP,
    ChildSpec,
    Supervisor,
    SupervisorSettings,
    describe_exit,
)

FAST = {"backoff_base_s": 0.05, "backoff_max_s": 0.2, "grace_s": 2.0}


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def exits_with(code: int, say: str = "run") -> list[str]:
    return py(f"import sys; print({say!r}, flush=True); sys.exit({code})")


class StopWhen(io.StringIO):
    """The supervisor's stdout; asks it to stop once `done(lines)` holds (same thread)."""

    def __init__(self, done) -> None:
        super().__init__()
        self.done = done
        self.sup: Supervisor | None = None

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()

    def write(self, s: str) -> int:
        n = super().write(s)
        if self.sup is not None and self.done(self.lines()):
            self.sup.request_stop()
        return n


def supervise(specs, done=lambda lines: False, **settings) -> tuple[int, StopWhen, Supervisor]:
    out = StopWhen(done)
    sup = Supervisor(specs, SupervisorSettings(**{**FAST, **settings}), out=out)
    out.sup = sup
    return sup.run(), out, sup


@pytest.mark.parametrize("code", [EX_TEMPFAIL, EX_STALLED, 1, -9])
def test_a_dead_child_is_restarted_and_its_output_passed_through(code, caplog):
    cmd = py("import os, signal; print('run', flush=True); os.kill(os.getpid(), signal.SIGKILL)") \
        if code == -9 else exits_with(code)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="infra.supervisor"):
        rc, out, sup = supervise(
            [ChildSpec("w", cmd)], done=lambda lines: lines.count("[w] run") >= 3, max_crashes=10
        )
    assert rc == 0, "stopped on request, not given up"
    assert out.lines().count("[w] run") >= 3
    assert sup.children[0].starts >= 3
    restarts = [r.getMessage() for r in caplog.records if "restarting in" in r.getMessage()]
    assert len(restarts) >= 2 and all(describe_exit(code) in m for m in restarts), restarts


def test_gives_up_loudly_after_n_crashes_in_a_row(caplog):
    specs = [
        ChildSpec(
            "bad",
            py("import sys; print('loading'); print('boom: broker unreachable'); sys.exit(76)"),
        ),
        ChildSpec("good", py("import time; print('up', flush=True); time.sleep(60)")),
    ]
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="infra.supervisor"):
        rc, out, sup = supervise(specs, max_crashes=3)
    assert rc == EXIT_GAVE_UP
    bad, good = sup.children
    assert bad.starts == 3 and bad.crashes_in_a_row == 3
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    msg = critical[0].getMessage()
    assert "giving up on bad" in msg and "3 crashes in a row" in msg
    assert "last exit 76 (a stage stalled)" in msg
    assert "boom: broker unreachable" in msg, "the tail of the child's output is in the message"
    # The healthy sibling was stopped with the supervisor (SIGTERM), not left behind.
    assert good.proc is None and good.last_exit == -signal.SIGTERM
    # Backoff 0.05 + 0.1 between the three runs, and no fixed 30 s waits.
    assert 0.15 <= time.monotonic() - t0 < 20


def test_a_config_error_is_not_restarted(caplog):
    with caplog.at_level(logging.CRITICAL, logger="infra.supervisor"):
        rc, _, sup = supervise([ChildSpec("sink", exits_with(78, "bad setting"))], max_crashes=5)
    assert rc == EXIT_GAVE_UP and sup.children[0].starts == 1
    assert "a restart cannot help" in caplog.text and "bad setting" in caplog.text


def test_a_stable_run_resets_the_crash_count():
    # Each run lasts longer than stable_after_s, so no run is a crash "in a row".
    cmd = py("import sys, time; print('run', flush=True); time.sleep(0.4); sys.exit(1)")
    rc, out, sup = supervise(
        [ChildSpec("w", cmd)], done=lambda lines: lines.count("[w] run") >= 4,
        max_crashes=2, stable_after_s=0.2,
    )  # fmt: skip
    assert rc == 0 and sup.children[0].starts >= 4
    assert sup.children[0].crashes_in_a_row == 1


def test_stop_forwards_sigterm_and_kills_a_child_that_ignores_it():
    polite = py("import time; print('up', flush=True); time.sleep(60)")
    stubborn = py(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    t0 = time.monotonic()
    rc, _, sup = supervise(
        [ChildSpec("polite", polite), ChildSpec("stubborn", stubborn)],
        done=lambda lines: "[polite] up" in lines and "[stubborn] up" in lines,
        grace_s=0.5,
    )
    assert rc == 0
    polite_c, stubborn_c = sup.children
    assert polite_c.last_exit == -signal.SIGTERM
    assert stubborn_c.last_exit == -signal.SIGKILL
    assert time.monotonic() - t0 < 15


def test_children_die_with_a_sigkilled_supervisor(tmp_path):
    """PR_SET_PDEATHSIG: a SIGKILLed supervisor leaves no unsupervised workers."""
    import subprocess

    pidfile = tmp_path / "child.pid"
    child = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    sup = subprocess.Popen(
        [sys.executable, "-m", "infra.supervisor", "--name", "c", "--", sys.executable, "-c", child],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child_pid = int(pidfile.read_text())
        os.kill(sup.pid, signal.SIGKILL)
        sup.wait()
        deadline = time.monotonic() + 10
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child_pid), "the child outlived its SIGKILLed supervisor"
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_cli_requires_a_command():
    from infra.supervisor import main

    with pytest.raises(SystemExit):
        main(["--name", "x"])


def test_describe_exit():
    assert describe_exit(75) == "send failed (EX_TEMPFAIL)"
    assert describe_exit(76) == "a stage stalled"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"
