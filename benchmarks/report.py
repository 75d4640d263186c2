"""Markdown tables of a results dict (the JSON that benchmarks.run writes)."""

from __future__ import annotations

from typing import Any


def render_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        "## Benchmark results",
        "",
        f"{m['cores']} cores ({m['cpu_model']}), Linux {m['kernel']}, shipper on Python {m['shipper_python']} "
        f"(`{m['shipper_interpreter']}`), harness on Python {m['harness_python']}; "
        f"shipper at {m['shipper_revision'] or 'unknown revision'}; "
        f"batch_wait {results['batch_wait']} s, {results['line_bytes']}-byte lines; {results['started']}, "
        f"load average at start {' '.join(map(str, m['load_average_at_start']))}.",
        f"Command: `{results['command']}`",
        "",
    ]
    names = [t["name"] for t in results["targets"]]
    for name in names:
        out += [f"### {name}", "", *_measurements(results, name), ""]
    shipper = names[0]
    out += [f"### Targets ({shipper})", "", "| workload | target | measured | result |", "|---|---|---|---|"]
    for w in results["workloads"]:
        run = w["runs"].get(shipper)
        for c in run["checks"] if run else []:
            out.append(f"| {w['name']} | {c['target']} | {c['measured']} | {'pass' if c['ok'] else '**FAIL**'} |")
    peers = [t["name"] for t in results["targets"] if t.get("peer", t["name"] != shipper)]
    if peers:
        out += ["", *peer_table(results, shipper, peers)]
    for peer in names[1:]:
        out += ["", f"### Ratios {shipper} / {peer} (same run)", "",
                "| workload | CPU millicores | lines per CPU-s | peak RSS | p99 latency |", "|---|---|---|---|---|"]
        for w in results["workloads"]:
            a, b = w["runs"].get(shipper), w["runs"].get(peer)
            if not a or not b or "error" in a or "error" in b:
                continue
            out.append(f"| {w['name']} | {_ratio(_millicores(a), _millicores(b))} | "
                       f"{_ratio(_lines_per_cpu_s(a), _lines_per_cpu_s(b))} | "
                       f"{_ratio(a['peak_rss_mib'], b['peak_rss_mib'])} | {_ratio(_p99(a), _p99(b))} |")
    return "\n".join(out) + "\n"


def peer_table(results: dict[str, Any], shipper: str, peers: list[str]) -> list[str]:
    """Per workload: CPU millicores and peak RSS of the shipper and of each peer, and peer / shipper.

    A workload a peer does not run says why in its cells; a peer run that failed, or lost or
    duplicated entries, says so instead of a figure. The last column is what each peer did.
    """
    head = ["workload", f"{shipper} millicores", f"{shipper} peak RSS MiB"]
    for peer in peers:
        head += [f"{peer} millicores", f"{peer} peak RSS MiB"]
    for peer in peers:
        head += [f"CPU {peer} / {shipper}", f"RSS {peer} / {shipper}"]
    head.append("what each peer did")
    rows = [f"### Peers side by side (same run, minutes apart; ratios peer / {shipper})", "",
            "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in results["workloads"]:
        a = w["runs"].get(shipper)
        if a is None:
            continue
        cells = [w["name"], *_figures(a)]
        ratios: list[str] = []
        did: list[str] = []
        for peer in peers:
            b = w["runs"].get(peer)
            reason = w.get("not_run", {}).get(peer)
            if b is None:
                why = f"n/a: {reason}" if reason else "n/a: not run"
                cells += [why, "n/a"]
                ratios += ["n/a", "n/a"]
                continue
            cells += _figures(b)
            ok = _usable(a) and _usable(b)
            ratios += [_ratio(_millicores(b), _millicores(a)) if ok else "-",
                       _ratio(b["peak_rss_mib"], a["peak_rss_mib"]) if ok else "-"]
            if b.get("processing"):
                did.append(f"{peer}: {b['processing']}")
        rows.append("| " + " | ".join([*cells, *ratios, "; ".join(did) or "-"]) + " |")
    return rows


def _usable(r: dict[str, Any]) -> bool:
    """A run whose figures mean something: it completed and delivered every entry once."""
    return "error" not in r and all(c["ok"] for c in r["checks"] if c["what"] == "delivery")


def _figures(r: dict[str, Any]) -> list[str]:
    """[millicores, peak RSS MiB] of a run, or why there are none."""
    if "error" in r:
        return ["error: " + r["error"].replace("|", "/"), "-"]
    failed = [c["measured"] for c in r["checks"] if c["what"] == "delivery" and not c["ok"]]
    suffix = f" (**delivery FAIL**: {', '.join(failed)})" if failed else ""
    return [_fmt(_millicores(r), ".2f") + suffix, f"{r['peak_rss_mib']:.1f}"]


def _measurements(results: dict[str, Any], target: str) -> list[str]:
    rows = ["| workload | entries delivered / expected | CPU millicores | lines per CPU-s | peak RSS MiB "
            "| max RssAnon MiB | latency p50 / p99 / max s | startup CPU s / RSS MiB | result |",
            "|---|---|---|---|---|---|---|---|---|"]
    for w in results["workloads"]:
        r = w["runs"].get(target)
        if r is None:
            continue
        if "error" in r:
            rows.append(f"| {w['name']} | {r['error']} | | | | | | | **FAIL** |")
            continue
        lat = r["latency_s"]
        latency = f"{lat['p50']:.3f} / {lat['p99']:.3f} / {lat['max']:.3f}" if lat else "-"
        failed = [c["what"] for c in r["checks"] if not c["ok"]]
        rows.append(
            f"| {w['name']} | {_delivered(r)} | {_fmt(_millicores(r), '.2f')} | "
            f"{_fmt(_lines_per_cpu_s(r), ',.0f')} | {r['peak_rss_mib']:.1f} | {r['max_rss_anon_mib']:.1f} | "
            f"{latency} | {r['startup']['cpu_s']:.3f} / {r['startup']['rss_mib']:.1f} | "
            f"{'**FAIL** ' + ', '.join(failed) if failed else 'pass'} |")
    return rows


def _delivered(r: dict[str, Any]) -> str:
    """`delivered / expected`, and the lines written when they made fewer entries."""
    expected = r.get("entries_expected", r["lines_written"])
    text = f"{r['lines_delivered']:,} / {expected:,}"
    return text if expected == r["lines_written"] else f"{text} ({r['lines_written']:,} lines)"


def _millicores(r: dict[str, Any]) -> float | None:
    value: float | None = r["window"]["millicores"]
    return value


def _lines_per_cpu_s(r: dict[str, Any]) -> float | None:
    value: float | None = r["lines_per_cpu_s"]
    return value


def _p99(r: dict[str, Any]) -> float | None:
    return r["latency_s"]["p99"] if r["latency_s"] else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"
