"""`python -m bench.api_load`: requests/s and latency of the read API's GET /v1/images/{id}.

A bounded load loop on loopback: `--concurrency` clients (one aiohttp session, keep-alive,
HTTPS with the run's CA and bearer token) send GET /v1/images/{id} over ids that exist,
for `--requests` requests in all after `--warmup` unmeasured ones, and the run stops at
`--max-seconds` whatever is left. Prints requests/s, p50/p95/p99/max in ms and the status
codes; `--json` writes the same as JSON. Any non-200 answer is counted and reported
(a failed request is never timed as a fast one).

The API under test: the one serving under --run-dir (<run_dir>/api/endpoint.json), or,
with --start, one started here on a free port against the configured keyspace and
stopped at the end. Ids: --ids, else the newest stored predictions from /v1/stats.

  python -m bench.api_load --start --requests 5000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.stats import percentile
from consumers.api.launch import Endpoint, read_endpoint, wait_serving


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.api_load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run-dir", default=os.environ.get("PIPELINE_RUN_DIR", ".run"))
    p.add_argument("--start", action="store_true", help="start an API process for the run")
    p.add_argument("--requests", type=int, default=3000, help="measured requests")
    p.add_argument("--warmup", type=int, default=200, help="unmeasured requests first")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--max-seconds", type=float, default=120.0, help="stop after this long")
    p.add_argument("--ids", nargs="*", help="image ids to request (default: newest stored)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _ids(http: aiohttp.ClientSession, ep: Endpoint, headers: dict[str, str]) -> list[str]:
    async with http.get(ep.url + "v1/stats", headers=headers, ssl=ep.ssl_context() or False) as r:
        r.raise_for_status()
        return [row["image_id"] for row in (await r.json())["newest"]]


async def load(
    ep: Endpoint,
    ids: list[str] | None,
    requests: int,
    warmup: int,
    concurrency: int,
    max_seconds: float,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {ep.token()}"}
    ssl_ctx = ep.ssl_context() or False
    conn = aiohttp.TCPConnector(limit=concurrency, ssl=ssl_ctx)
    async with aiohttp.ClientSession(connector=conn) as http:
        ids = ids or await _ids(http, ep, headers)
        if not ids:
            raise SystemExit("no stored prediction to request: run the demo first or pass --ids")
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        issued = 0
        total = warmup + requests
        deadline = time.monotonic() + max_seconds
        t_measure = time.perf_counter()

        async def client() -> None:
            nonlocal issued, t_measure
            while issued < total and time.monotonic() < deadline:
                n = issued
                issued += 1
                if n == warmup:
                    t_measure = time.perf_counter()
                url = f"{ep.url}v1/images/{ids[n % len(ids)]}"
                t0 = time.perf_counter()
                async with http.get(url, headers=headers) as r:
                    await r.read()
                    status = r.status
                if n >= warmup:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 200:
                        latencies.append((time.perf_counter() - t0) * 1000.0)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t_measure
    done = sum(statuses.values())
    return {
        "url": ep.url,
        "route": "GET /v1/images/{id}",
        "distinct_ids": len(ids),
        "concurrency": concurrency,
        "requests": done,
        "ok": len(latencies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(elapsed, 2),
        "requests_per_s": round(done / elapsed, 1) if elapsed > 0 else None,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else None,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.warmup < 0:
        print("--requests and --concurrency must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir)
    proc = None
    if args.start:
        run_dir = run_dir / "bench-api"
        env = {**os.environ, "PIPELINE_RUN_DIR": str(run_dir), "PIPELINE_LOG_LEVEL": "WARNING"}
        run_dir.mkdir(parents=True, exist_ok=True)
        log = open(run_dir / "api.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "consumers", "api", "--port", str(_free_port())],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
    try:
        ep = wait_serving(run_dir, 60, pid=proc.pid) if proc is not None else read_endpoint(run_dir)
        if ep is None:
            print(f"no API serving under {run_dir} (start one, or pass --start)", file=sys.stderr)
            return 2
        res = asyncio.run(
            load(ep, args.ids, args.requests, args.warmup, args.concurrency, args.max_seconds)
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    print(
        f"{res['route']}: {res['requests']} requests, {res['concurrency']} in flight, "
        f"{res['requests_per_s']} req/s; latency ms p50 {res['p50_ms']:.1f} "
        f"p95 {res['p95_ms']:.1f} p99 {res['p99_ms']:.1f} max {res['max_ms']:.1f}; "
        f"statuses {res['statuses']}"
        if res["ok"]
        else f"no successful request: {res}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if res["ok"] == res["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
