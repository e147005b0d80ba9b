"""`python -m bench`: model-only vs pipeline vs transport on the local clusters.

  python -m bench              default run (<= 15 min): 3 repetitions of each measurement
  python -m bench --quick      1 repetition, smaller bursts and grid
  python -m bench --only model,transport --tag sink-conc-256

Sections: model (the best model-only layout of a small grid), pipeline (today's path,
then the new path, through the real workers and sink), transport (through relay
processes), faust (the same through the real stream workers in relay mode), agreement
(the new model step's top-1 against today's, stream_app.agreement).

Results: bench/results/latest.json and bench/results/<UTC timestamp>[-tag].json, and a
table on stdout. If no cluster node runs, the clusters are started first and stopped
at the end (KEEP=1 or --keep leaves them up). Services run under .run/bench (pid
files) and are always stopped at the end. Settings of the services come from the environment (PIPELINE_...), so a
candidate fix is measured without editing code, e.g.
  PIPELINE_SINK__CONCURRENCY=256 python -m bench --only transport --tag conc256
"""

from __future__ import annotations

import argparse
import datetime as dt
import faulthandler
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import paths, pipeline, topology, transport
from bench.cpu import CpuMeter, cluster_pids
from bench.machine import machine_info
from bench.report import print_table
from bench.stats import median_at, paired_ratios, ratio, stage_breakdown, summarize
from bench.waits import liveness, retrying, wait_caught_up
from infra import cassandra_session
from infra.logs import configure
from infra.settings import PipelineSettings
from orchestration.readiness import start_all, wait_ready
from orchestration.services import Services
from schemas import topics

log = logging.getLogger("bench")
RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("model", "pipeline", "transport", "faust", "agreement")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="one repetition, small bursts (~2-3 min)")
    p.add_argument("--only", default=",".join(SECTIONS), help="subset of " + ",".join(SECTIONS))
    p.add_argument("--reps", type=int, help="repetitions per measurement (default 3, quick 1)")
    p.add_argument("--images", type=int, help="images per pipeline burst (default 480, quick 64)")
    p.add_argument(
        "--events", type=int, help="events per transport burst (default 10000, quick 3000)"
    )
    p.add_argument(
        "--workers", type=int, default=2, help="stream worker processes (as `make demo`)"
    )
    p.add_argument("--sinks", type=int, default=1, help="sink processes")
    p.add_argument("--relays-per-hop", type=int, default=1, help="identity relay processes per hop")
    p.add_argument("--relay-linger-ms", type=int, help="linger.ms of the relays' producers")
    p.add_argument("--grid-processes", default="1,2", help="model-only grid: processes")
    p.add_argument("--grid-threads", default="1,2", help="model-only grid: torch threads each")
    p.add_argument("--grid-batches", default="1,2,4,16", help="model-only grid: batch sizes")
    p.add_argument(
        "--grid-images", type=int, help="images per grid cell pass (default 48, quick 32)"
    )
    p.add_argument("--grid-reps", type=int, default=1, help="passes per grid cell")
    p.add_argument(
        "--old-env",
        default=",".join(f"{k}={v}" for k, v in paths.OLD_PATH_ENV.items()),
        help="settings of today's path (K=V,...); the new path is the defaults",
    )
    p.add_argument(
        "--no-old-path", action="store_true", help="run the pipeline with the new path only"
    )
    p.add_argument(
        "--faust-events",
        type=int,
        help="events per burst through the stream workers in relay mode (default 5000, quick 2000)",
    )
    p.add_argument(
        "--agreement-images", type=int, default=500, help="images of the agreement check"
    )
    p.add_argument(
        "--warmup-rounds",
        type=int,
        default=8,
        help="at most this many warm-up bursts per section; they stop earlier once "
        "the servers' JIT compilation is under --jit-settled of their CPU",
    )
    p.add_argument(
        "--jit-settled",
        type=float,
        default=0.15,
        help="JIT compiler share of the cluster JVMs' CPU in a warm-up burst below "
        "which the servers count as warm",
    )
    p.add_argument("--tag", default="", help="suffix of the timestamped result file")
    p.add_argument(
        "--keep",
        action="store_true",
        default=os.environ.get("KEEP") == "1",
        help="leave the clusters running if this run started them (also KEEP=1)",
    )
    p.add_argument("--run-dir", default=".run/bench")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one run")
    p.add_argument(
        "--cluster-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for all 6 cluster nodes to be up at the start",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    # A crash inside a client library's C code (librdkafka, the driver's event loop)
    # should leave a Python traceback in the log, not just "Segmentation fault".
    faulthandler.enable()
    args = _parser().parse_args(argv)
    configure(os.environ.get("PIPELINE_LOG_LEVEL", "WARNING"))
    log.setLevel(logging.INFO)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if only - set(SECTIONS):
        print(f"--only: unknown section(s) {sorted(only - set(SECTIONS))}", file=sys.stderr)
        return 2
    reps = args.reps or (1 if args.quick else 3)
    # 480: at ~45 images/s a burst lasts ~10 s, so its fill and drain (~1 s) weigh
    # little even in the end-to-end rate; the steady rate leaves them out altogether.
    n_images = args.images or (64 if args.quick else 480)
    n_events = args.events or (3000 if args.quick else 10000)
    n_faust = args.faust_events or (2000 if args.quick else 5000)
    started = time.time()
    settings = PipelineSettings()
    settings.cassandra.keyspace = topology.KEYSPACE
    out: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "args": vars(args),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("PIPELINE_")},
        "note": "figures are medians over repetitions on a shared, noisy 2-core machine; "
        "see spread_pct and values",
    }
    cluster, session = None, None
    error: BaseException | None = None
    started_clusters = False
    try:
        started_clusters = start_clusters_if_stopped()
        out["clusters_started_by_bench"] = started_clusters
        step("clusters: waiting until Kafka has 3 brokers and Cassandra 3 nodes up")
        out["clusters_at_start"] = wait_clusters(args.cluster_timeout)
        step("provision: bench topics (bench.t.*, bench.p.*, bench.f.*) and keyspace vision_bench")
        from infra.provision import provision

        for prefix, (stream_group, sink_group) in topology.GROUPS.items():
            retrying(  # secure mode: also the ACLs of the bench's own groups
                lambda prefix=prefix, sg=stream_group, kg=sink_group: provision(
                    settings,
                    topic_prefix=prefix,  # type: ignore[misc]
                    keyspace=topology.KEYSPACE,
                    cassandra=prefix == topology.PREFIX,
                    stream_group=sg,
                    sink_group=kg,
                ),
                timeout_s=300,
                what="provisioning",
            )
        cluster, session = cassandra_session.connect(settings.cassandra)
        out["machine"] = machine_info(session)
        model = model_section(args, n_images, out) if "model" in only else None
        try:
            if "pipeline" in only:
                if not args.no_old_path:
                    old_env = paths.parse_env(args.old_env)
                    step(f"pipeline, today's path: {old_env}")
                    pipeline_section(
                        args,
                        session,
                        n_images,
                        reps,
                        out.setdefault("pipeline_old", {"env": old_env}),
                        None,
                        env=old_env,
                        half_rate=False,
                    )
                step("pipeline, the new path (the stream app's defaults)")
                pipeline_section(
                    args, session, n_images, reps, out.setdefault("pipeline", {}), model
                )
            elif model is not None:
                for _ in range(reps):
                    model.one_rep()
        finally:
            if model is not None:
                out["model_only"] = model.result()
                model.close()
        if "transport" in only:
            transport_section(
                args, settings, session, n_events, reps, out.setdefault("transport", {})
            )
        if "faust" in only:
            transport_section(
                args,
                settings,
                session,
                n_faust,
                reps,
                out.setdefault("transport_faust", {}),
                topology.FAUST,
            )
        if "agreement" in only:
            out["agreement"] = agreement_section(args)
    except BaseException as exc:  # KeyboardInterrupt too: keep what was measured
        error = exc
        out["incomplete"] = f"{type(exc).__name__}: {exc}"
    finally:
        if cluster is not None:
            cluster.shutdown()
        st = cluster_status() if error is None else None
        out["clusters_at_end"] = st and {
            "kafka_brokers": st["kafka"]["brokers"],
            "cassandra_up": st["cassandra"]["up_nodes"],
        }
        out["ratios"] = ratios(out)
        out["wall_s"] = round(time.time() - started, 1)
        out["machine_load_after"] = [round(x, 2) for x in os.getloadavg()]
        path = write_results(out, args.tag + ("-incomplete" if error else ""), latest=error is None)
        print_table(out)
        print(f"\nresults: {path}; wall {out['wall_s']:.0f}s")
        if started_clusters and not args.keep:
            step("clusters: stopping them (this run started them; KEEP=1 leaves them up)")
            subprocess.run([sys.executable, "-m", "infra", "down"], check=False)
    if error is not None:
        raise error
    return 0


def cluster_status() -> dict[str, Any] | None:
    res = subprocess.run(
        [sys.executable, "-m", "infra", "status", "--json"],
        text=True,
        capture_output=True,
        timeout=60,
    )
    try:
        return json.loads(res.stdout)
    except json.JSONDecodeError:
        return None


def start_clusters_if_stopped() -> bool:
    """`make bench` on a fresh clone: no local cluster node runs, so start them (as
    `make demo` does). A cluster that is partly up (someone's fault test stopped a node)
    is left alone and waited for. True if this run started them."""
    st = cluster_status()
    if st and st["kafka"]["brokers"] >= 3 and st["cassandra"]["up_nodes"] >= 3:
        return False
    if cluster_pids():
        return False
    step("clusters: none running; starting Kafka (3 brokers) and Cassandra (3 nodes)")
    if subprocess.run([sys.executable, "-m", "infra", "up"], check=False).returncode != 0:
        raise RuntimeError("the clusters did not start (see above); `python -m infra status`")
    return True


def wait_clusters(timeout_s: float) -> dict[str, Any]:
    """Other people's fault tests stop nodes on the shared clusters: wait for all six."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = cluster_status()
        if st and st["kafka"]["brokers"] >= 3 and st["cassandra"]["up_nodes"] >= 3:
            return {
                "kafka_brokers": st["kafka"]["brokers"],
                "cassandra_up": st["cassandra"]["up_nodes"],
            }
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"clusters not complete within {timeout_s:.0f}s: {st and {k: st[k] for k in ('kafka', 'cassandra')}}"
            )
        time.sleep(2.0)


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def model_section(args: argparse.Namespace, n_images: int, out: dict[str, Any]) -> Any:
    """Search the grid of layouts, then keep the winner running for paired passes."""
    from bench.model_only import ModelOnly, layout_from, search

    n_grid = args.grid_images or (32 if args.quick else 48)
    step(
        f"model-only: grid of processes {args.grid_processes} x torch threads "
        f"{args.grid_threads} x batch {args.grid_batches} x the stream app's runtimes, "
        f"{n_grid} images per cell"
    )
    try:
        grid = search(
            n_grid,
            _ints(args.grid_processes),
            _ints(args.grid_threads),
            _ints(args.grid_batches),
            reps=args.grid_reps,
        )
    except BaseException:
        out["model_only"] = {"incomplete": "the grid search did not finish"}
        raise
    step(f"model-only: best layout {grid['winner']} (grid took {grid['wall_s']:.0f}s)")
    step(f"model-only: {n_images} images per pass, interleaved with the pipeline's bursts")
    return ModelOnly(n_images, layout_from(grid["winner_layout"]), grid)


def agreement_section(args: argparse.Namespace) -> dict[str, Any]:
    """stream_app.agreement in its own process (torch stays out of this one): the new
    path's top-1 against today's over >= --agreement-images offline images."""
    step(f"agreement: new path vs today's top-1 over >= {args.agreement_images} images")
    res = subprocess.run(
        [sys.executable, "-m", "stream_app.agreement", "--min-images", str(args.agreement_images)],
        capture_output=True,
        text=True,
        timeout=args.timeout,
        check=False,
    )
    try:
        report: dict[str, Any] = json.loads(res.stdout)
    except json.JSONDecodeError:
        return {"error": f"exit {res.returncode}: {res.stderr.strip()[-2000:]}"}
    report["exit_code"] = res.returncode
    step(
        f"agreement: {report.get('agreeing')}/{report.get('images')} images agree "
        f"({report.get('fraction')}), {len(report.get('differing') or [])} differ"
    )
    return report


def _services(args: argparse.Namespace, env: dict[str, str] | None = None) -> Services:
    return Services(Path(args.run_dir), env)


def pipeline_section(
    args: argparse.Namespace,
    session: Any,
    n_images: int,
    reps: int,
    res: dict[str, Any],
    model: Any = None,
    env: dict[str, str] | None = None,
    half_rate: bool = True,
) -> dict[str, Any]:
    """Fills `res` as it goes, so an interrupted run keeps what it measured. `env`: the
    services' settings on top of this process's (today's path); `half_rate`: also the runs
    at half the saturation rate."""
    from stream_app.settings import StreamSettings

    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:  # the settings the workers will see, for the record
        ss = StreamSettings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # The bench publishes and probes as the operator (admin principal); the workers it
    # starts log in as `stream`, with the ACLs granted at provisioning.
    kafka = PipelineSettings().kafka
    services = _services(args, env)
    specs = topology.pipeline_specs(args.workers, args.sinks, run_dir=args.run_dir)
    ports = topology.web_ports(args.workers)
    prefix = topology.PIPELINE_PREFIX
    app_topics = [prefix + s.source for s in topics.STAGES]
    res.update(
        {
            "workers": args.workers,
            "sinks": args.sinks,
            "images_per_burst": n_images,
            "batch_size": ss.stream.worker.batch_size,
            "batch_window_s": ss.stream.worker.batch_window_s,
            "torch_threads_per_worker": ss.stream.infer.torch_threads,
            "model_settings": ss.stream.model.model_dump(mode="json"),
            "infer_settings": ss.stream.infer.model_dump(mode="json"),
            "jpeg_draft": getattr(ss.stream.decode, "jpeg_draft", None),
        }
    )
    bursts: list[dict[str, Any]] = []
    paced: list[dict[str, Any]] = []
    model_rates: list[float | None] = []  # the model-only pass run just before each burst
    half = 0.0
    step(
        f"pipeline: starting {args.workers} stream worker(s) and {args.sinks} sink(s) on {prefix}*"
    )
    try:
        start_all(services, specs)
        alive = liveness(services, [s.name for s in specs])
        meter = CpuMeter({**cluster_pids(), **{s.name: services.pid(s.name) for s in specs}})
        t0 = time.monotonic()
        wait_ready(
            services,
            [s.name for s in specs],
            kafka,
            {topology.PIPELINE_APP_ID: args.workers, topology.PIPELINE_SINK_GROUP: 1},
            300,
        )
        wait_caught_up(
            kafka,
            {
                topology.PIPELINE_APP_ID: app_topics,
                topology.PIPELINE_SINK_GROUP: [prefix + topics.PREDICTIONS],
            },
            600,
            alive,
        )
        res["startup_s"] = round(time.monotonic() - t0, 1)
        tag0 = f"p{int(time.time())}"
        res["background_cpu_s_per_s"] = meter.sample_background_once()
        res["warm_up"] = warm_up(
            "pipeline",
            meter,
            args,
            lambda i: pipeline.run_once(
                alive, session, f"{tag0}-warm{i}", 32, timeout_s=args.timeout
            ),
        )
        for r in range(reps):
            m_rate = model.one_rep() if model is not None else None
            h0 = pipeline.worker_health(ports)
            lag = pipeline.LagSampler(
                kafka, topology.PIPELINE_APP_ID, topology.PIPELINE_SINK_GROUP, prefix
            )
            run = pipeline.run_once(
                alive,
                session,
                f"{tag0}-burst{r}",
                n_images,
                timeout_s=args.timeout,
                meter=meter,
                lag=lag,
            )
            h1 = pipeline.worker_health(ports)
            s = run.summary()
            s["stages"] = stage_breakdown(run.rows.values(), [st.name for st in topics.STAGES])
            s["batches"] = batch_delta(pipeline.batch_summary(h0), pipeline.batch_summary(h1))
            bursts.append(s)
            model_rates.append(m_rate)
            if m_rate and s["per_s"]:
                s["model_only_images_per_s_just_before"] = round(m_rate, 2)
            step(
                f"pipeline burst {r + 1}/{reps}: {s['per_s']} images/s end to end, "
                f"{s['steady_per_s']} steady, p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms"
            )
        sat = summarize([b["per_s"] for b in bursts if b["per_s"]])
        half = (sat["median"] or 1.0) / 2.0
        n_paced = max(16, n_images // 2)
        for r in range(reps if half_rate else 0):
            run = pipeline.run_once(
                alive,
                session,
                f"{tag0}-paced{r}",
                n_paced,
                rate=half,
                timeout_s=args.timeout,
                meter=meter,
            )
            s = run.summary()
            s["stages"] = stage_breakdown(run.rows.values(), [st.name for st in topics.STAGES])
            paced.append(s)
            step(
                f"pipeline paced {r + 1}/{reps} at {half:.1f}/s: {s['per_s']} images/s, "
                f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms"
            )
        res["health_after"] = pipeline.worker_health(ports)
    finally:
        res["paired_ratio_over_model_only"] = summarize(paired_ratios(bursts, "per_s", model_rates))
        res["paired_steady_ratio_over_model_only"] = summarize(
            paired_ratios(bursts, "steady_per_s", model_rates)
        )
        res["saturation"] = {
            "images_per_s": summarize([b["per_s"] for b in bursts if b["per_s"]]),
            "steady_images_per_s": summarize(
                [b["steady_per_s"] for b in bursts if b["steady_per_s"]]
            ),
            "p50_ms": summarize([b["p50_ms"] for b in bursts]),
            "p95_ms": summarize([b["p95_ms"] for b in bursts]),
            "p99_ms": summarize([b["p99_ms"] for b in bursts]),
            "cpu_ms_per_image": cpu_summary(bursts),
            "max_lag": max_lag(bursts),
            "runs": bursts,
        }
        res["half_rate"] = {
            "rate_per_s": round(half, 2),
            "images_per_s": summarize([b["per_s"] for b in paced if b["per_s"]]),
            "p50_ms": summarize([b["p50_ms"] for b in paced]),
            "p95_ms": summarize([b["p95_ms"] for b in paced]),
            "p99_ms": summarize([b["p99_ms"] for b in paced]),
            "runs": paced,
        }
        step("pipeline: stopping its services")
        services.stop_all()
    return res


def warm_up(
    section: str, meter: CpuMeter, args: argparse.Namespace, burst: Callable[[int], Any]
) -> dict[str, Any]:
    """Warm-up bursts until the servers' JIT compilation settles (a probe, not a count).

    Freshly started Kafka and Cassandra JVMs spend much of their CPU compiling hot code
    during the first minutes of traffic; measured then, the pipeline would be charged
    for the servers' start-up. Each burst's JIT share of the cluster JVMs' CPU is
    recorded; bursts stop once it falls below `--jit-settled`, or after
    `--warmup-rounds` (then `settled` is false and the JSON says so).
    """
    shares: list[float] = []
    settled = False
    for i in range(max(1, args.warmup_rounds)):
        a = meter.snapshot()
        burst(i)
        b = meter.snapshot()
        cpu = meter.diff(a, b, 1)["cpu_s_before_background_subtraction"]
        servers = sum(v for k, v in cpu.items() if k in ("kafka", "cassandra", "jit"))
        share = cpu.get("jit", 0.0) / servers if servers else 0.0
        shares.append(round(share, 3))
        step(f"{section}: warm-up burst {i + 1}: JIT compilation {share:.0%} of the servers' CPU")
        if share < args.jit_settled:
            settled = True
            break
    return {
        "bursts": len(shares),
        "jit_share_per_burst": shares,
        "settled": settled,
        "threshold": args.jit_settled,
    }


def batch_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for stage, a in after.items():
        b = before.get(stage, {})
        rin = a["records_in"] - b.get("records_in", 0)
        bat = a["batches"] - b.get("batches", 0)
        out[stage] = {
            "records": rin,
            "batches": bat,
            "mean_batch_size": round(rin / bat, 2) if bat else None,
            "images_per_busy_s": a.get("images_per_busy_s"),
        }
    return out


def transport_section(
    args: argparse.Namespace,
    settings: PipelineSettings,
    session: Any,
    n_events: int,
    reps: int,
    res: dict[str, Any],
    kind: topology.TransportKind = topology.RELAYS,
) -> dict[str, Any]:
    """The transport through `kind`'s stages: bench.relay processes (the floor of a
    Python hop) or the real stream workers in relay mode."""
    kafka = settings.kafka
    services = _services(args)
    hops = topology.transport_hops(kind.prefix)
    if kind.name == "faust":
        specs = topology.faust_transport_specs(args.workers, args.sinks, args.run_dir)
        per_group = args.workers
        what = f"{args.workers} stream worker(s) in relay mode"
    else:
        specs = topology.transport_specs(args.sinks, args.relays_per_hop, args.relay_linger_ms)
        per_group = args.relays_per_hop
        what = f"{len(hops)} x {args.relays_per_hop} identity relay(s)"
    res.update(
        {
            "stages": kind.name,
            "events_per_burst": n_events,
            "sinks": args.sinks,
            "relays_per_hop": args.relays_per_hop if kind.name != "faust" else None,
            "workers": args.workers if kind.name == "faust" else None,
            "hops": len(hops),
            "rows_per_event": 2,
        }
    )
    runs: list[dict[str, Any]] = []
    section = f"transport ({kind.name})"
    step(f"{section}: starting {what} and {args.sinks} sink(s) on {kind.prefix}*")
    try:
        start_all(services, specs)
        alive = liveness(services, [s.name for s in specs])
        meter = CpuMeter({**cluster_pids(), **{s.name: services.pid(s.name) for s in specs}})
        want = dict.fromkeys(kind.stage_groups(), per_group)
        want[kind.sink_group] = args.sinks
        wait_ready(services, [s.name for s in specs], kafka, want, 300)
        lags = kind.stage_groups()
        lags[kind.sink_group] = [kind.prefix + topics.PREDICTIONS]
        wait_caught_up(kafka, lags, 600, alive)
        tag0 = f"{kind.name[0]}{int(time.time())}"
        res["background_cpu_s_per_s"] = meter.sample_background_once()
        warm_n = min(2000, max(200, n_events // 4))
        res["warm_up"] = warm_up(
            section,
            meter,
            args,
            lambda i: transport.run_once(
                settings,
                alive,
                session,
                f"{tag0}-warm{i}",
                warm_n,
                timeout_s=args.timeout,
                kind=kind,
            ),
        )
        for r in range(reps):
            run = transport.run_once(
                settings,
                alive,
                session,
                f"{tag0}-{r}",
                n_events,
                timeout_s=args.timeout,
                meter=meter,
                kind=kind,
            )
            s = run.summary()
            runs.append(s)
            step(
                f"{section} burst {r + 1}/{reps}: {s['per_s']} events/s end to end, "
                f"{s['steady_per_s']} steady, p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, "
                f"missing {s['missing']}"
            )
    finally:
        res["cpu_ms_per_event"] = cpu_summary(runs)
        res["events_per_s"] = summarize([x["per_s"] for x in runs if x["per_s"]])
        res["steady_events_per_s"] = summarize(
            [x["steady_per_s"] for x in runs if x["steady_per_s"]]
        )
        res["p50_ms"] = summarize([x["p50_ms"] for x in runs])
        res["p99_ms"] = summarize([x["p99_ms"] for x in runs])
        res["runs"] = runs
        step(f"{section}: stopping its services")
        services.stop_all()
    return res


def max_lag(runs: list[dict[str, Any]]) -> dict[str, int]:
    """Per stage, the median over runs of the largest input lag seen during each."""
    per: dict[str, list[float]] = {}
    for r in runs:
        for stage, v in ((r.get("lag") or {}).get("max_lag") or {}).items():
            per.setdefault(stage, []).append(v)
    return {k: int(summarize(v)["median"] or 0) for k, v in per.items()}


def cpu_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median CPU ms per item by component, and the machine share the others took."""
    per: dict[str, list[float]] = {}
    others: list[float] = []
    for r in runs:
        cpu = r.get("cpu") or {}
        for k, v in (cpu.get("cpu_ms_per_item") or {}).items():
            per.setdefault(k, []).append(v)
        if cpu.get("others_pct_of_machine") is not None:
            others.append(cpu["others_pct_of_machine"])
    out: dict[str, Any] = {k: summarize(v)["median"] for k, v in sorted(per.items())}
    out["total"] = round(sum(v for v in out.values() if v), 3)
    out["others_pct_of_machine"] = summarize(others)["median"]
    return out


def ratios(out: dict[str, Any]) -> dict[str, Any]:
    model = median_at(out.get("model_only"), "images_per_s")
    pipe = median_at(out.get("pipeline"), "saturation", "images_per_s")
    steady = median_at(out.get("pipeline"), "saturation", "steady_images_per_s")
    trans = median_at(out.get("transport"), "events_per_s")
    paired = (out.get("pipeline") or {}).get("paired_ratio_over_model_only", {})
    paired_steady = (out.get("pipeline") or {}).get("paired_steady_ratio_over_model_only", {})
    model_cpu = median_at(out.get("model_only"), "cpu_ms_per_image")
    pipe_cpu = (out.get("pipeline") or {}).get("saturation", {}).get("cpu_ms_per_image", {})
    own = sum(v for k, v in pipe_cpu.items() if k in ("worker", "psink", "bench") and v) or None
    total = pipe_cpu.get("total") or None
    old = median_at(out.get("pipeline_old"), "saturation", "images_per_s")
    old_steady = median_at(out.get("pipeline_old"), "saturation", "steady_images_per_s")
    faust = median_at(out.get("transport_faust"), "events_per_s")
    faust_steady = median_at(out.get("transport_faust"), "steady_events_per_s")
    trans_steady = median_at(out.get("transport"), "steady_events_per_s")
    agreement = out.get("agreement") or {}
    return {
        "pipeline_new_over_old": ratio(pipe, old),
        "pipeline_new_over_old_steady": ratio(steady, old_steady),
        "goal_pipeline_new_over_old": 2.0,
        "transport_faust_events_per_s": faust,
        "transport_faust_over_relay": ratio(faust, trans),
        "transport_faust_over_relay_steady": ratio(faust_steady, trans_steady),
        "agreement_fraction": agreement.get("fraction"),
        "agreement_bar": agreement.get("bar"),
        # CPU per image of the model alone over CPU per image of the pipeline: the share
        # of the pipeline's CPU that is model work, i.e. pipeline / model-only on a
        # machine with nothing else running. Load-independent, unlike the rates.
        "cpu_efficiency_own_processes": ratio(model_cpu, own),
        "cpu_efficiency_incl_clusters": ratio(model_cpu, total),
        "pipeline_over_model_only": ratio(pipe, model),
        "pipeline_over_model_only_paired": paired.get("median"),
        "pipeline_over_model_only_paired_range": [paired.get("min"), paired.get("max")],
        "pipeline_steady_over_model_only": ratio(steady, model),
        "pipeline_steady_over_model_only_paired": paired_steady.get("median"),
        "pipeline_steady_over_model_only_paired_range": [
            paired_steady.get("min"),
            paired_steady.get("max"),
        ],
        "transport_events_per_s": trans,
        "goal_pipeline_over_model_only": 0.8,
        "goal_transport_events_per_s": 3000,
    }


def write_results(out: dict[str, Any], tag: str, latest: bool = True) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{stamp}-{tag}.json" if tag else f"{stamp}.json"
    text = json.dumps(out, indent=2, default=str) + "\n"
    path = RESULTS / name
    path.write_text(text)
    if latest:  # an interrupted run keeps its file but does not replace latest.json
        (RESULTS / "latest.json").write_text(text)
    return path
