"""The short table `python -m bench` prints (the JSON has everything else)."""

from __future__ import annotations

from typing import Any


def _fmt(s: dict[str, Any] | None, unit: str = "", digits: int = 1) -> str:
    if not s or s.get("median") is None:
        return "-"
    med = f"{s['median']:.{digits}f}{unit}"
    if s.get("n", 0) > 1:
        return f"{med}  [{s['min']:.{digits}f}..{s['max']:.{digits}f}, n={s['n']}]"
    return med


def _cpu(c: dict[str, Any]) -> str:
    parts = [
        f"{k} {v:.2f}" for k, v in c.items() if k not in ("total", "others_pct_of_machine") and v
    ]
    return (
        ", ".join(parts) + f"; total {c.get('total')}; others used "
        f"{c.get('others_pct_of_machine')}% of the machine meanwhile"
    )


def _warm(w: dict[str, Any] | None) -> str:
    if not w:
        return "-"
    shares = ", ".join(f"{x:.0%}" for x in w["jit_share_per_burst"])
    return f"{w['bursts']} burst(s), servers' JIT share {shares}" + (
        "" if w["settled"] else f" (not below {w['threshold']:.0%}: servers still warming)"
    )


def _grid(g: dict[str, Any] | None) -> None:
    if not g or not g.get("cells"):
        return
    cells = sorted(g["cells"], key=lambda c: -(c["images_per_s"]["median"] or 0.0))
    print(
        f"  model-only grid ({len(cells)} layouts, {g['images']} images each, "
        f"{len(g.get('skipped') or [])} skipped, {len(g.get('failed') or [])} failed), images/s:"
    )
    for i in range(0, len(cells), 3):
        print(
            "    "
            + "   ".join(
                f"{c['label']:<22}{c['images_per_s']['median']:6.1f}" for c in cells[i : i + 3]
            )
        )


def _side_by_side(old: dict[str, Any], new: dict[str, Any]) -> None:
    """CPU ms per image by component, today's path beside the new one."""
    keys = [k for k in sorted({*old, *new}) if k not in ("total", "others_pct_of_machine")]
    print("    CPU ms/image by component        today's   new")
    for k in [*keys, "total"]:
        a, b = old.get(k), new.get(k)
        print(
            f"      {k:<29}{'-' if a is None else f'{a:.2f}':>8}  {'-' if b is None else f'{b:.2f}':>6}"
        )


def _agreement(a: dict[str, Any] | None) -> None:
    if not a:
        return
    if a.get("error"):
        print(f"  agreement: failed: {a['error'][:200]}")
        return
    diff = a.get("differing") or []
    print(
        f"  agreement (top-1, new vs today's)   {a.get('agreeing')}/{a.get('images')} = "
        f"{a.get('fraction')} (bar {a.get('bar')}: {'met' if a.get('meets_bar') else 'NOT met'})"
    )
    for d in diff[:10]:
        print(f"    differs: {d['image']}: {d['today']['label']} -> {d['new']['label']}")
    if len(diff) > 10:
        print(f"    ... and {len(diff) - 10} more (see the JSON)")


def _steady(section: dict[str, Any], unit: str) -> None:
    """The burst's rate over the middle 80 % of its completions (no fill, no drain)."""
    key = f"steady_{unit}_per_s"
    if (section.get(key) or {}).get("median") is not None:
        print(f"    steady {unit}/s (middle 80 %)".ljust(38) + _fmt(section[key]))


def print_table(out: dict[str, Any]) -> None:
    m = out.get("model_only")
    p = out.get("pipeline")
    po = out.get("pipeline_old")
    t = out.get("transport")
    tf = out.get("transport_faust")
    r = out.get("ratios", {})
    print("\n  measurement                          median  [min..max, n]")
    print("  " + "-" * 76)
    if m and m.get("images_per_s"):
        _grid(m.get("grid"))
        label = m.get("label") or f"b={m['batch_size']}, thr={m['torch_threads']}"
        print(f"  model-only images/s, best layout: {label}".ljust(38))
        print("    images/s".ljust(38) + _fmt(m["images_per_s"]))
        if m.get("cpu_ms_per_image", {}).get("median"):
            print("    CPU ms/image (all threads)".ljust(38) + _fmt(m["cpu_ms_per_image"]))
        ms = m["ms_per_image"]
        print(
            "    ms/image decode / infer / post".ljust(38)
            + " / ".join(f"{ms[k]['median']:.2f}" for k in ("decode", "infer", "postprocess"))
        )
    if po and "saturation" in po:
        print("  pipeline warm-up, today's path".ljust(38) + _warm(po.get("warm_up")))
        print(
            "  pipeline images/s, today's path".ljust(38) + _fmt(po["saturation"]["images_per_s"])
        )
        _steady(po["saturation"], "images")
    if p and "saturation" in p:
        sat, half = p["saturation"], p["half_rate"]
        print("  pipeline warm-up".ljust(38) + _warm(p.get("warm_up")))
        print("  pipeline images/s at saturation".ljust(38) + _fmt(sat["images_per_s"]))
        _steady(sat, "images")
        print(
            "    latency p50 / p95 / p99 (ms)".ljust(38)
            + " / ".join(_fmt(sat[k], digits=0).split()[0] for k in ("p50_ms", "p95_ms", "p99_ms"))
        )
        print(
            f"  pipeline at half rate ({half['rate_per_s']}/s)".ljust(38)
            + _fmt(half["images_per_s"])
        )
        print(
            "    latency p50 / p95 / p99 (ms)".ljust(38)
            + " / ".join(_fmt(half[k], digits=0).split()[0] for k in ("p50_ms", "p95_ms", "p99_ms"))
        )
        runs = half.get("runs") or sat.get("runs") or []
        if runs and runs[-1].get("stages"):
            print("    per hop p50 ms at half rate (queue + work):")
            for hop, v in runs[-1]["stages"].items():
                print(f"      {hop:<28}{v['p50_ms']}")
        if po and po.get("saturation", {}).get("cpu_ms_per_image") and sat.get("cpu_ms_per_image"):
            _side_by_side(po["saturation"]["cpu_ms_per_image"], sat["cpu_ms_per_image"])
        elif sat.get("cpu_ms_per_image"):
            print("    CPU ms/image by component: " + _cpu(sat["cpu_ms_per_image"]))
        if sat.get("max_lag"):
            print(
                "    max input lag during a burst (records): "
                + ", ".join(f"{k} {v}" for k, v in sat["max_lag"].items())
            )
        batches = (sat.get("runs") or [{}])[-1].get("batches") or {}
        if batches:
            print(
                "    mean batch size at saturation: "
                + ", ".join(f"{k} {v['mean_batch_size']}" for k, v in batches.items())
            )
    if t and "events_per_s" in t:
        print("  transport warm-up".ljust(38) + _warm(t.get("warm_up")))
        print(
            f"  transport events/s ({t['hops']} identity hops + sink)".ljust(38)
            + _fmt(t["events_per_s"])
        )
        _steady(t, "events")
        print(
            "    latency p50 / p99 (ms)".ljust(38)
            + " / ".join(_fmt(t[k], digits=0).split()[0] for k in ("p50_ms", "p99_ms"))
        )
        if t.get("cpu_ms_per_event"):
            print("    CPU ms/event by component: " + _cpu(t["cpu_ms_per_event"]))
    if tf and "events_per_s" in tf:
        print("  transport warm-up, stream workers".ljust(38) + _warm(tf.get("warm_up")))
        print(
            f"  transport events/s through {tf.get('workers')} stream workers (relay mode)".ljust(
                38
            )
            + _fmt(tf["events_per_s"])
        )
        _steady(tf, "events")
        print(
            "    latency p50 / p99 (ms)".ljust(38)
            + " / ".join(_fmt(tf[k], digits=0).split()[0] for k in ("p50_ms", "p99_ms"))
        )
        if tf.get("cpu_ms_per_event"):
            print("    CPU ms/event by component: " + _cpu(tf["cpu_ms_per_event"]))
    _agreement(out.get("agreement"))
    print("  " + "-" * 76)
    if r.get("pipeline_new_over_old") is not None:
        print(
            f"  pipeline new / today's path: {r['pipeline_new_over_old']} end to end, "
            f"{r.get('pipeline_new_over_old_steady')} steady "
            f"(goal >= {r.get('goal_pipeline_new_over_old')})"
        )
    print(
        f"  pipeline / model-only: {r.get('pipeline_over_model_only')} (ratio of medians), "
        f"paired per burst {r.get('pipeline_over_model_only_paired')} "
        f"{r.get('pipeline_over_model_only_paired_range')} (goal >= {r.get('goal_pipeline_over_model_only')})"
    )
    if r.get("pipeline_steady_over_model_only") is not None:
        print(
            f"  pipeline steady / model-only: {r['pipeline_steady_over_model_only']}, paired per "
            f"burst {r.get('pipeline_steady_over_model_only_paired')} "
            f"{r.get('pipeline_steady_over_model_only_paired_range')}"
        )
    print(
        f"  CPU efficiency (model CPU/image / pipeline CPU/image): own processes "
        f"{r.get('cpu_efficiency_own_processes')}, incl. Kafka+Cassandra "
        f"{r.get('cpu_efficiency_incl_clusters')}"
    )
    print(
        f"  transport events/s: {r.get('transport_events_per_s')} "
        f"(goal >= {r.get('goal_transport_events_per_s')})"
    )
    if r.get("transport_faust_events_per_s") is not None:
        vs = r.get("transport_faust_over_relay")
        print(
            f"  transport through the stream workers: {r['transport_faust_events_per_s']} events/s"
            + (f" = {vs} x the relay processes' (the floor of a Python hop)" if vs else "")
        )
