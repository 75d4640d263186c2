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
