"""The report: the targets tables (issues 9 and 20) and the Markdown sections of BENCHMARKS.md."""
from __future__ import annotations

from benchmarks_md import short_model_name


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"

def _foreign_text(report: dict) -> str:
    kept = [v.get("foreign_cores") for v in report["summary"].values() if v.get("foreign_cores") is not None]
    if not kept:
        return "other processes' CPU use not measured"
    return f"other processes used {fmt(min(kept), 2)}-{fmt(max(kept), 2)} cores during the kept (fastest) runs"

def targets(report: dict) -> list[tuple[str, str, str, bool]]:
    """(target, threshold, measured, met) of issue 9's CPU targets, from the report."""
    r, s, out = report["ratios"], report["summary"], []
    if "infonce_vs_sentence_transformers" in r:
        out.append(("infonce sentences/s vs sentence-transformers", ">= 1.2x", f"{r['infonce_vs_sentence_transformers']:.2f}x",
                    r["infonce_vs_sentence_transformers"] >= 1.2))
        out.append(("infonce peak RSS vs sentence-transformers", "<= 1.0x",
                    f"{s['infonce']['peak_rss_mb']:.0f} / {s['st']['peak_rss_mb']:.0f} MB",
                    s["infonce"]["peak_rss_mb"] <= s["st"]["peak_rss_mb"]))
    for name, limit in (("clusterns", 1.05), ("mixcse", 1.02)):
        key = f"{name}_vs_infonce"
        if key in r:
            out.append((f"{name} time per step vs infonce", f"<= {limit}x", f"{r[key]:.3f}x", r[key] <= limit))
    d = report.get("diffcse_expected", {})
    if "measured_over_implied" in d:
        out.append(("diffcse vs what its extra passes imply (timings)", "within 10%",
                    f"{r['diffcse_vs_infonce']:.2f}x vs {d['implied_by_time']:.2f}x ({100 * (d['measured_over_implied'] - 1):+.1f}%)",
                    abs(d["measured_over_implied"] - 1) <= 0.10))
    if "matmul_utilisation" in report:
        out.append(("infonce matmul utilisation", ">= 50%", f"{100 * report['matmul_utilisation']:.1f}%",
                    report["matmul_utilisation"] >= 0.5))
    # issue 23's (second round) targets
    if "infonce_vs_sentence_transformers" in r:
        out.append(("issue 23: infonce sentences/s vs sentence-transformers", ">= 1.8x",
                    f"{r['infonce_vs_sentence_transformers']:.2f}x", r["infonce_vs_sentence_transformers"] >= 1.8))
    if "matmul_utilisation" in report:
        out.append(("issue 23: infonce matmul utilisation (FLOPs it runs / torch.mm's rate)", ">= 85%",
                    f"{100 * report['matmul_utilisation']:.1f}%", report["matmul_utilisation"] >= 0.85))
    return out + grad_cache_targets(report)


def grad_cache_targets(report: dict) -> list[tuple[str, str, str, bool]]:
    """Issue 20's targets of the gradient cache (--mini_batch_size), where the report measured them."""
    r, out = report["ratios"], []
    if "infonce_cached_vs_infonce" in r:
        out.append((f"issue 20: infonce-cached time per sentence vs infonce (batch {report['batch_size']})", "<= 1.4x",
                    f"{r['infonce_cached_vs_infonce']:.3f}x", r["infonce_cached_vs_infonce"] <= 1.4))
    sweep = report.get("rss_sweep", {}).get("infonce-cached")
    if sweep and "1024" in {str(b) for b in sweep["cached_mb"]}:
        cached = {str(b): v for b, v in sweep["cached_mb"].items()}["1024"]
        out.append((f"issue 20: infonce-cached peak RSS at batch 1024 vs infonce at batch {sweep['uncached_batch']}", "<= 1.25x",
                    f"{cached:.0f} / {sweep['uncached_mb']:.0f} MB = {cached / sweep['uncached_mb']:.2f}x",
                    cached <= 1.25 * sweep["uncached_mb"]))
    for config, target in (("infonce-cached", 4096), ("diffcse-cached", 1024)):
        mem = report.get("memory", {}).get(config)
        if mem:
            largest = f"{'>= ' if mem.get('capped_at_memory_max') else ''}{mem['largest_batch']}"
            out.append((f"issue 20: largest {config} batch within {mem['budget_mb']:.0f} MB", f">= {target}", largest,
                        mem["largest_batch"] >= target))
    return out


TITLES = {"bench_train": "Training step (CPU)", "bench_grad_cache": "Big batches on little memory: --mini_batch_size (CPU)"}

def markdown(report: dict) -> str:
    m, s, r = report["machine"], report["summary"], report["ratios"]
    lines = [f"## {TITLES.get(report.get('section', 'bench_train'), 'Training step (CPU)')}", ""]
    if "command" in report:
        lines += [f"`{report['command']}` ({report['measured_at']})", ""]
    lines += [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({next(iter(s.values())).get('torch_threads', m['torch_threads'])} threads per run), "
        f"Python {m['python']}; model `{short_model_name(report['model'])}`, batch {report['batch_size']}, "
        f"max length {report['max_seq_length']}, {report['steps']} measured steps after {report['warmup']} warm-up steps, "
        f"fastest of {report['repeat']} interleaved repeats; sentences: {report['sentences']}; "
        f"padding fraction of the measured batches {fmt(100 * report['padding_fraction'], 1)}%; "
        f"optimizer {report['summary'][next(iter(report['summary']))].get('optim', '?')}, lr {report['learning_rate']:g}; "
        f"load average during the runs {fmt(min(report['load_averages']), 1)}-{fmt(max(report['load_averages']), 1)}, "
        f"{_foreign_text(report)}. GPU: not measured.",
        "",
        "| configuration | packed linear | s/step (wall) | CPU s/step | sentences/s | time vs infonce | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    base = s["infonce"]["wall_s_per_step"] if "infonce" in s else None
    for name, v in s.items():
        ratio = fmt(v["wall_s_per_step"] / base) if base else "-"
        lines.append(f"| {name} | {'yes' if v['packed_linear'] else 'no'} | {fmt(v['wall_s_per_step'], 3)} | "
                     f"{fmt(v['cpu_s_per_step'], 3)} | {fmt(report['batch_size'] / v['wall_s_per_step'], 1)} | {ratio} | "
                     f"{fmt(v['peak_rss_mb'], 0)} |")
    rows = targets(report)
    if rows:
        lines += ["", "| target (CPU) | threshold | measured | met |", "|---|---|---|---|"]
        lines += [f"| {t} | {th} | {v} | {'yes' if ok else '**no**'} |" for t, th, v, ok in rows]
    lines.append("")
    for key, value in r.items():
        lines.append(f"- `{key}`: {fmt(value, 3)}")
    if "flops" in report:
        f = report["flops"]
        lines += [
            f"- infonce step: {fmt(f['executed_flop_per_step'] / 1e9, 1)} GFLOP of encoder matmuls per step "
            f"(counted on {f['counted_tokens']} tokens{f.get('last_layer_note', '')}; "
            f"{fmt(f['useful_flop_per_step'] / 1e9, 1)} GFLOP on the non-pad tokens), "
            f"{fmt(f['achieved_flop_per_s'] / 1e9, 1)} GFLOP/s achieved vs {fmt(f['matmul_flop_per_s'] / 1e9, 1)} GFLOP/s for "
            f"torch.mm at the encoder's shapes: utilisation {fmt(100 * report['matmul_utilisation'], 1)}% "
            f"(useful-FLOP utilisation {fmt(100 * f['useful_utilisation'], 1)}%)",
        ]
    guard = report["summary"].get("infonce", {}).get("guard_ms_per_step")
    if guard is not None:
        lines.append(f"- the trainer's non-finite loss/gradient check (one host sync per update): {fmt(guard, 2)} ms per step "
                     f"({fmt(100 * guard / 1000 / report['summary']['infonce']['wall_s_per_step'], 3)}% of the infonce step)")
    collate = report["summary"].get("infonce", {}).get("collate_ms_per_step")
    if collate is not None:
        lines.append(f"- collating a batch (padding, in the main process: --dataloader_num_workers {report.get('num_workers', 0)}): "
                     f"{fmt(collate, 2)} ms per step; tokenization is done once by `datasets.map` before training")
    tokenize, st = report["summary"].get("infonce", {}).get("tokenize_ms_per_step"), report["summary"].get("st", {})
    if tokenize is not None and "infonce_vs_sentence_transformers_both_tokenizing" in r:
        lines.append(
            f"- tokenization, timed the same way for both: sentence-transformers tokenizes inside its step (its collator, "
            f"anchors and positives: {fmt(st['collate_ms_per_step'], 1)} ms per step), ours once before training; tokenizing "
            f"our batch in the step would add {fmt(tokenize, 1)} ms. Both tokenizing in the step: infonce "
            f"{fmt(r['infonce_vs_sentence_transformers_both_tokenizing'], 2)}x sentence-transformers; neither: "
            f"{fmt(r['infonce_vs_sentence_transformers_neither_tokenizing'], 2)}x")
    if "diffcse_expected" in report:
        d = report["diffcse_expected"]
        lines.append(
            f"- diffcse: measured {fmt(r.get('diffcse_vs_infonce', float('nan')), 2)}x infonce; implied by its extra passes "
            f"{fmt(d['implied_by_time'], 2)}x from their timings (generator forward {fmt(d['generator_fwd_s'], 3)} s + "
            f"discriminator forward+backward {fmt(d['discriminator_fwd_bwd_s'], 3)} s on top of the infonce step), "
            f"{fmt(d['implied_by_flops'], 2)}x from their FLOPs (generator: {d['generator']})")
    if report.get("memory"):
        for name, mem in report["memory"].items():
            probes = ", ".join(f"{b}: {fmt(v, 0)}" for b, v in mem["probes"].items())
            capped = " or more (the search stops at --memory_max)" if mem.get("capped_at_memory_max") else ""
            lines.append(f"- largest batch within {fmt(mem['budget_mb'], 0)} MB peak RSS, {name}: **{mem['largest_batch']}**{capped} "
                         f"(probes, batch: MB = {probes})")
    for name, sweep in report.get("rss_sweep", {}).items():
        cached = ", ".join(f"{b}: {fmt(v, 0)}" for b, v in sweep["cached_mb"].items())
        lines.append(f"- peak RSS (MB) of {name} (--mini_batch_size {report['mini_batch_size']}) by batch: {cached}; "
                     f"{sweep['uncached']} without caching at batch {sweep['uncached_batch']}: {fmt(sweep['uncached_mb'], 0)}")
    return "\n".join(lines)
