"""The benchmark's JSON as a markdown page, with the issue's targets beside the figures."""

from __future__ import annotations


def _single(rows: dict, title: str) -> list[str]:
    who = ["runtime", "ort", "tflite", "numpy", "keras"]
    present = [w for w in who if any(w in r for r in rows.values())]
    out = [f"### {title}", "",
           "| model | " + " | ".join(f"{w} median / p99 µs" for w in present)
           + " | runtime ÷ ort | runtime ÷ tflite |",
           "|---" * (len(present) + 3) + "|"]
    for name, row in rows.items():
        cells = [f"{row[w]['median_us']:.1f} / {row[w]['p99_us']:.1f}" if w in row else "–"
                 for w in present]
        rt = row["runtime"]["median_us"]
        ratios = [f"{rt / row[w]['median_us']:.2f}" if w in row else "–" for w in ("ort", "tflite")]
        out.append(f"| {name} | " + " | ".join(cells + ratios) + " |")
    return out + [""]


def _many(rows: dict, title: str) -> list[str]:
    out = [f"### {title}", "", "| model | streams | stream-steps/s in one call | same, one "
           "thread | one by one | ratio |", "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        for n, r in row.items():
            one = r.get("one_thread_steps_per_s")
            out.append(f"| {name} | {int(n):,} | {r['batched_steps_per_s']:,.0f} | "
                       f"{'–' if one is None else f'{one:,.0f}'} | "
                       f"{r['one_by_one_steps_per_s']:,.0f} | {r['ratio']:.1f}× |")
    return out + [""]


def _framing(row: dict) -> list[str]:
    out = ["### Default forecast framing vs the plain LSTM of the same size (CPU, one stream)",
           "", "| model | nodes | µs per reading (least round median) | rounds' spread µs |",
           "|---|---|---|---|"]
    for name, r in row.items():
        if not name.startswith("ratio"):
            out.append(f"| {name} | {r['nodes']} | {r['us']:.1f} | "
                       f"{r['spread_us'][0]:.1f}–{r['spread_us'][1]:.1f} |")
    with_linear = (f"; with the linear path {row['ratio_linear']:.2f}×"
                   if "ratio_linear" in row else "")
    return out + ["", f"Ratio {row['ratio']:.2f}× (target ≤ 1.15×){with_linear}.", ""]


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"## Benchmark ({report['when']})", "",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['platform']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
             f"- threads: {m['threads']}",
             f"- load average (1, 5, 15 min): {m.get('load')} at the start, "
             f"{report.get('load_after')} at the end",
             "- targets: step ≤ 1.1× raw ORT and ≤ 0.7× TFLite; 1,024 streams in one call "
             "≥ 50× one by one; cold start ≤ 0.3 s", ""]
    if "framing" in report:
        lines += _framing(report["framing"])
    if "framing_floor" in report:
        from .framing_floor import table

        lines += ["The least any graph could cost (`python -m bench.framing_floor`: the same "
                  "LSTM 32 built by hand in the fewest nodes per framing, none of them able "
                  "to stand for the exported file, which also takes many readings per call "
                  "and a fresh stream's flag):", "", *table(report["framing_floor"]), ""]
    lines += _single(report["single"], "Per-step latency, one stream (CPU)")
    if "live" in report:
        from .live import markdown as live_markdown
        lines += live_markdown(report["live"])
    lines += _many(report["many"], "Many streams per call (CPU)")
    lines += ["### Chunked feed (CPU, readings/s)", "", "| model | " + " | ".join(
        f"chunk {int(c):,}" for c in next(iter(report["chunked"].values()))) + " |",
        "|---" * (1 + len(next(iter(report["chunked"].values())))) + "|"]
    for name, row in report["chunked"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:,.0f}" for v in row.values()) + " |")
    lines += ["", "### Cold start (fresh process, median)", "", "| what | seconds |", "|---|---|"]
    lines += [f"| {k} | {v['median_s']:.3f} |" for k, v in report["cold"].items()]
    lines += ["", "### Memory and export", "", "| what | figure |", "|---|---|"]
    lines += [f"| peak RSS, {int(n):,} streams (2x64) | {v['peak_rss_mib']:.1f} MiB |"
              for n, v in report["memory"].items()]
    lines.append(f"| lstm-export 2x64, incl. TensorFlow import and parity check | "
                 f"{report['export_cli']['median_s']:.2f} s |")
    lines += [f"| export() in process, {k} | {v:.2f} s |"
              for k, v in report.get("export_in_process_s", {}).items()]
    lines.append("")
    if "cuda_single" in report:
        lines += _single(report["cuda_single"], "Per-step latency, one stream (CUDA)")
        lines += _many(report["cuda_many"], "Many streams per call (CUDA)")
    else:
        lines += [f"CUDA: {report.get('cuda', 'not measured')}.", ""]
    return "\n".join(lines)
