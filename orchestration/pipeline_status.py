"""What `python -m orchestration pipeline status` shows, and whether the pipeline is healthy.

`collect` does the I/O: each service's supervisor and children from /proc, and each
stream worker's `GET /health/` on the web ports its spec recorded. `render` and
`problems` are pure. Stage fields follow the worker health contract (docs/stream_app.md:
records in/out, dead letters by reason, oldest unacknowledged input, lag from the
committed offset to the log end, time since the last progress, stalled); a field a
worker does not report shows as "-", never as 0.

Unhealthy (exit 1): a service down, a supervisor without its children, a worker whose
health does not answer or whose status is not "ok", a stage marked stalled.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from orchestration.services import Services, process_age_s

HEALTH_TIMEOUT_S = 2.0


def fetch_health(port: int, timeout_s: float = HEALTH_TIMEOUT_S) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/", timeout=timeout_s) as r:
            body = json.loads(r.read())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def collect(services: Services) -> dict[str, Any]:
    out = []
    for st in services.status():
        entry: dict[str, Any] = {
            "name": st.name,
            "state": st.state,
            "pid": st.pid,
            "log": st.log,
            "children": [{"pid": c, "age_s": _round(process_age_s(c))} for c in st.children],
            "workers": [],
            # Why a supervisor stopped: its give-up line (infra/supervisor.py), if any.
            "last_critical": _last_critical(services.tail(st.name, 200))
            if st.state != "up"
            else None,
        }
        if st.state == "up":
            for port in st.web_ports:
                h = fetch_health(port)
                entry["workers"].append({"port": port, "reachable": h is not None, "health": h})
        out.append(entry)
    report: dict[str, Any] = {"services": out}
    report["problems"] = problems(report)
    return report


def problems(report: dict[str, Any]) -> list[str]:
    found = (
        []
        if report["services"]
        else ["no pipeline services recorded (python -m orchestration pipeline up)"]
    )
    for svc in report["services"]:
        name = svc["name"]
        if svc["state"] != "up":
            why = svc.get("last_critical")
            found.append(f"{name}: down" + (f" ({why})" if why else ""))
            continue
        if not svc["children"]:
            found.append(f"{name}: its supervisor runs no process (restarting, or it gave up)")
        for w in svc["workers"]:
            h = w["health"]
            if h is None:
                found.append(f"{name}: worker on :{w['port']} does not answer /health/")
                continue
            if h.get("status", "ok") != "ok":
                found.append(
                    f"{name}: worker on :{w['port']} (pid {h.get('pid')}) is {h.get('status')}"
                )
            for stage in h.get("stages", []):
                if stage.get("stalled"):
                    found.append(
                        f"{name}: worker on :{w['port']} stage {stage.get('stage')} STALLED "
                        f"(oldest unacked {_age(stage.get('oldest_unacked_age_s'))}, "
                        f"last progress {_age(stage.get('last_progress_age_s'))} ago)"
                    )
    return found


STAGE_COLUMNS = ("stage", "in", "out", "dlq", "dead letters by reason", "oldest unacked",
                 "lag", "last progress", "")  # fmt: skip


def render(report: dict[str, Any]) -> str:
    lines = []
    for svc in report["services"]:
        kids = ", ".join(f"{c['pid']} (up {_age(c['age_s'])})" for c in svc["children"]) or "-"
        lines.append(
            f"{svc['name']:<15} {svc['state']:<5} supervisor pid {svc['pid'] or '-'!s:<8} "
            f"processes {kids}   log {svc['log']}"
        )
        for w in svc["workers"]:
            h = w["health"]
            if h is None:
                lines.append(f"  worker :{w['port']}  NOT ANSWERING")
                continue
            lines.append(f"  worker :{w['port']}  pid {h.get('pid', '-')}  {h.get('status', '-')}")
            rows = [STAGE_COLUMNS] + [_stage_row(s) for s in h.get("stages", [])]
            widths = [max(len(r[i]) for r in rows) for i in range(len(STAGE_COLUMNS))]
            for r in rows:
                lines.append(
                    "    "
                    + "  ".join(c.ljust(wd) for c, wd in zip(r, widths, strict=True)).rstrip()
                )
    found = report.get("problems") or []
    lines.append("")
    lines.append("healthy" if not found else "NOT HEALTHY:\n" + "\n".join(f"  {p}" for p in found))
    return "\n".join(lines)


def _stage_row(s: dict[str, Any]) -> tuple[str, ...]:
    reasons = s.get("dead_letter_reasons")
    by_reason = (
        ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
        if isinstance(reasons, dict) and reasons
        else "-"
    )
    return (
        str(s.get("stage", "-")),
        _num(s.get("records_in")),
        _num(s.get("records_out")),
        _num(s.get("dead_letters")),
        by_reason,
        _age(s.get("oldest_unacked_age_s")),
        _lag(s),
        _age(s.get("last_progress_age_s")),
        "STALLED" if s.get("stalled") else "",
    )


def _lag(s: dict[str, Any]) -> str:
    total = s.get("total_lag")
    if total is None:
        return "-"
    parts = s.get("lag")
    behind = (
        [f"p{p}={v}" for p, v in sorted((parts or {}).items()) if v]
        if isinstance(parts, dict)
        else []
    )
    return f"{total}" + (f" ({', '.join(behind)})" if behind and len(behind) <= 3 else "")


def _last_critical(log_tail: str) -> str | None:
    lines = [line for line in log_tail.splitlines() if " CRITICAL " in line]
    return lines[-1].split(" CRITICAL ", 1)[1][:300] if lines else None


def _num(v: Any) -> str:
    return "-" if v is None else str(v)


def _age(v: Any) -> str:
    if not isinstance(v, int | float):
        return "-"
    if v < 120:
        return f"{v:.1f}s"
    return f"{v / 60:.0f}m" if v < 7200 else f"{v / 3600:.1f}h"


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)
