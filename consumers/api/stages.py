"""The pipeline's stages for the page: the workers' JSON health, merged per stage.

`health_urls` finds the workers' endpoints (a setting, else the `web_ports` of each
service spec under <run_dir>/services, or its `--web-port`). `merge` is pure: it sums counters over workers,
derives a rate from earlier samples (`RateWindow`) and marks a stage stalled when it has
lag but no batch for `stall_after_s`. `fetch` does the HTTP with a short deadline: a
worker that does not answer is listed as down, it does not fail the request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp

FETCH_TIMEOUT_S = 3.0  # a worker busy with a forward pass answers late, not never
COUNTERS = ("records_in", "records_out", "dead_letters", "batches", "failed_batches")


def health_urls(configured: list[str], run_dir: Path) -> list[str]:
    if configured:
        return list(configured)
    ports: list[int] = []
    for spec_file in sorted((run_dir / "services").glob("*.json")):
        try:
            spec = json.loads(spec_file.read_text())
            argv = list(spec.get("argv", []))
        except (OSError, ValueError, AttributeError, TypeError):
            continue
        # `web_ports`: every worker's port (a supervisor of N workers has N); older specs
        # name one worker's port on its command line.
        found = [p for p in spec.get("web_ports") or [] if isinstance(p, int)]
        if not found and "--web-port" in argv[:-1]:
            port = str(argv[argv.index("--web-port") + 1])
            found = [int(port)] if port.isdigit() else []
        ports += found
    return [f"http://127.0.0.1:{p}/health/" for p in dict.fromkeys(ports)]


async def fetch(session: aiohttp.ClientSession, urls: list[str]) -> list[dict[str, Any]]:
    """One entry per url: {"url", "ok", "health"|"error"}."""

    async def one(url: str) -> dict[str, Any]:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)) as r:
                if r.status != 200:
                    return {"url": url, "ok": False, "error": f"HTTP {r.status}"}
                return {"url": url, "ok": True, "health": await r.json(content_type=None)}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return {"url": url, "ok": False, "error": type(exc).__name__}

    return list(await asyncio.gather(*(one(u) for u in urls)))


class RateWindow:
    """records_in per stage over the last `window_s` seconds, from successive merges."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def rate(self, now: float, totals: dict[str, int]) -> dict[str, float | None]:
        while self._samples and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        out: dict[str, float | None] = {}
        if self._samples and now - self._samples[0][0] >= 0.5:
            t0, old = self._samples[0]
            for stage, n in totals.items():
                # A restarted worker starts its counters at 0: never a negative rate.
                out[stage] = (
                    round(max(0, n - old.get(stage, 0)) / (now - t0), 2) if stage in old else None
                )
        self._samples.append((now, dict(totals)))
        return {s: out.get(s) for s in totals}


def merge(
    results: list[dict[str, Any]], rates: RateWindow, stall_after_s: float, now: float | None = None
) -> dict[str, Any]:
    now = time.monotonic() if now is None else now
    stages: dict[str, dict[str, Any]] = {}
    workers = []
    for res in results:
        health = res.get("health") or {}
        workers.append(
            {
                "url": res["url"],
                "up": bool(res.get("ok")),
                "status": health.get("status") if res.get("ok") else "down",
                "pid": health.get("pid"),
                "error": res.get("error"),
            }
        )
        for st in health.get("stages", []) if res.get("ok") else []:
            agg = stages.setdefault(
                st["stage"],
                {
                    "stage": st["stage"],
                    "source": st.get("source"),
                    "workers": 0,
                    **{c: 0 for c in COUNTERS},
                    "lag": 0,
                    "lag_known": True,
                    "dead_letter_reasons": {},
                    "seconds_since_last_batch": None,
                },
            )
            agg["workers"] += 1
            for c in COUNTERS:
                agg[c] += int(st.get(c) or 0)
            if st.get("total_lag") is None:
                agg["lag_known"] = False
            else:
                agg["lag"] += int(st["total_lag"])
            for reason, n in (st.get("dead_letter_reasons") or {}).items():
                agg["dead_letter_reasons"][reason] = agg["dead_letter_reasons"].get(reason, 0) + n
            since = st.get("seconds_since_last_batch")
            if since is not None and (
                agg["seconds_since_last_batch"] is None or since < agg["seconds_since_last_batch"]
            ):
                agg["seconds_since_last_batch"] = since
    rate = rates.rate(now, {s: a["records_in"] for s, a in stages.items()})
    for name, agg in stages.items():
        agg["rate_per_s"] = rate.get(name)
        if not agg.pop("lag_known"):
            agg["lag"] = None
        since = agg["seconds_since_last_batch"]
        agg["stalled"] = bool(agg["lag"]) and (since is None or since >= stall_after_s)
    order = {"decode": 0, "infer": 1, "postprocess": 2}
    return {
        "stages": sorted(stages.values(), key=lambda a: (order.get(a["stage"], 9), a["stage"])),
        "workers": workers,
        "workers_up": sum(1 for w in workers if w["up"]),
    }
