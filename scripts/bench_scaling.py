"""Scaling measured, not assumed: how the training step's time grows with the batch, the sentence length, ClusterNS's K
and DiffCSE's generator, each beside what the FLOPs imply, each against a baseline measured in the same run.

    python scripts/bench_scaling.py --train_file ../shared/data/corpus/en_sentences.txt --markdown --update_md BENCHMARKS.md

- batch: infonce at --batches (64,128,256), length 32: time per step vs the first batch, beside the ratio of the encoder's
  matmul FLOPs per step (bench/flops.py: the tokens each step really computes, packed);
- length: infonce at --lengths (32,64,128), batch 64, on sentences long enough to fill them (--long_join consecutive
  corpus lines joined into one), the same two ratios;
- ClusterNS with clustering active at each of --ks (32,128) vs infonce, the Trainer logging every step
  (--logging_steps 1: the objective's logs are read on every step, as in a real run that logs each step);
- DiffCSE with a generator of --generator_layers layers (6: the recipe's distilbert is 6 layers) vs infonce, beside what
  its extra passes imply from their own timings and from their FLOPs.

Every group runs through scripts/bench_train.py (each configuration in a fresh subprocess, the fastest of --repeat
interleaved repeats).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train  # noqa: E402
from bench.sentences import default_model, load_sentences  # noqa: E402
from benchmarks_md import command_line, machine, publish, short_model_name, utc_now  # noqa: E402

SECTION = "bench_scaling"


def integers(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: {flag} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"error: {flag} takes positive integers, got {text!r}")
    return values


def long_corpus(train_file: str | None, join: int, lines: int, path: str) -> str:
    """`lines` lines, each `join` consecutive corpus sentences joined: long enough to fill the longest length."""
    pool = load_sentences(train_file, lines * join)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            f.write(" ".join(pool[i * join:(i + 1) * join]) + "\n")
    return path


def bench(a, extra: list[str], work: str, name: str) -> dict:
    """One bench_train.py run; its JSON report."""
    out = os.path.join(work, f"{name}.json")
    argv = ["--model_name_or_path", a.model, "--warmup", str(a.warmup), "--steps", str(a.steps), "--repeat", str(a.repeat),
            "--threads", str(a.threads), "--json", out, *(["--in_process"] if a.in_process else []), *extra]
    if "--train_file" not in extra and a.train_file:
        argv += ["--train_file", a.train_file]
    print(f"[scaling] {name}: bench_train.py {' '.join(extra)}", file=sys.stderr, flush=True)
    code = bench_train.main(argv)
    if code != 0:
        raise SystemExit(f"error: bench_train.py failed for {name} ({code})")
    with open(out) as f:
        return json.load(f)


def sweep_point(report: dict) -> dict:
    s = report["summary"]["infonce"]
    return {"s_per_step": s["wall_s_per_step"], "flop_per_step": report["flops"]["executed_flop_per_step"],
            "tokens_per_step": s["tokens_per_step"], "padded_tokens_per_step": s["padded_tokens_per_step"]}


def measure(a, work: str) -> dict:
    report: dict = {"batch": {}, "length": {}, "clusterns": {}, "diffcse": {}}
    for b in a.batches:
        r = bench(a, ["--configs", "infonce", "--batch_size", str(b), "--max_seq_length", "32"], work, f"batch-{b}")
        report["batch"][str(b)] = sweep_point(r)
    corpus = long_corpus(a.train_file, a.long_join, (a.warmup + a.steps) * 64 + 64, os.path.join(work, "long.txt"))
    for length in a.lengths:
        r = bench(a, ["--configs", "infonce", "--batch_size", "64", "--max_seq_length", str(length), "--train_file", corpus],
                  work, f"length-{length}")
        report["length"][str(length)] = sweep_point(r)
    for k in a.ks:
        r = bench(a, ["--configs", "infonce,clusterns", "--clusterns_k", str(k), "--logging_steps", "1", "--no_matmul",
                      "--batch_size", "64", "--max_seq_length", "32"], work, f"clusterns-{k}")
        s = r["summary"]
        report["clusterns"][str(k)] = {"infonce_s": s["infonce"]["wall_s_per_step"], "clusterns_s": s["clusterns"]["wall_s_per_step"],
                                       "ratio": r["ratios"]["clusterns_vs_infonce"]}
    r = bench(a, ["--configs", "infonce,diffcse", "--generator_layers", str(a.generator_layers), "--batch_size", "64",
                  "--max_seq_length", "32"], work, "diffcse")
    d = r["diffcse_expected"]
    report["diffcse"] = {"generator_layers": a.generator_layers, "infonce_s": r["summary"]["infonce"]["wall_s_per_step"],
                         "diffcse_s": r["summary"]["diffcse"]["wall_s_per_step"], "ratio": r["ratios"]["diffcse_vs_infonce"],
                         "implied_by_time": d["implied_by_time"], "implied_by_flops": d["implied_by_flops"],
                         "generator": d["generator"]}
    return report


def sweep_rows(points: dict, unit: str) -> list[str]:
    keys = list(points)
    base = points[keys[0]]
    rows = []
    for key in keys:
        p = points[key]
        rows.append(f"| {unit} {key} | {p['s_per_step']:.3f} | {p['tokens_per_step']:.0f} | {p['s_per_step'] / base['s_per_step']:.2f}x | "
                    f"{p['flop_per_step'] / base['flop_per_step']:.2f}x | "
                    f"{(p['s_per_step'] / base['s_per_step']) / (p['flop_per_step'] / base['flop_per_step']):.2f} |")
    return rows


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "## Scaling of the training step (CPU)", "",
        f"Measured {report['measured_at']} on {m.get('cpu', '?')} ({m.get('cores', '?')} cores), model "
        f"`{short_model_name(report['model'])}`, {report['steps']} measured steps after {report['warmup']} warm-up steps, fastest "
        f"of {report['repeat']} interleaved repeats per configuration (scripts/bench_train.py). Command: `{report['command']}`. "
        "Time ratio over FLOP ratio: 1.00 = the step grows exactly as its matmul FLOPs. GPU: not measured.", "",
        "| infonce | s/step | non-pad tokens/step | time vs first | matmul FLOPs vs first | time ratio / FLOP ratio |",
        "|---|---|---|---|---|---|",
    ]
    lines += sweep_rows(report["batch"], "batch") + sweep_rows(report["length"], "length")
    lines += ["", f"The length rows run on lines of {report['long_join']} corpus sentences joined, so that each length is filled "
              "(batch 64).", "",
              "| ClusterNS, clustering active, logging every step | infonce s/step | clusterns s/step | clusterns vs infonce |",
              "|---|---|---|---|"]
    for k, c in report["clusterns"].items():
        lines.append(f"| K = {k} | {c['infonce_s']:.3f} | {c['clusterns_s']:.3f} | {c['ratio']:.3f}x |")
    d = report["diffcse"]
    lines += ["", "| DiffCSE | infonce s/step | diffcse s/step | measured vs infonce | implied by its parts' timings | implied by FLOPs |",
              "|---|---|---|---|---|---|",
              f"| generator of {d['generator_layers']} layers | {d['infonce_s']:.3f} | {d['diffcse_s']:.3f} | {d['ratio']:.2f}x | "
              f"{d['implied_by_time']:.2f}x | {d['implied_by_flops']:.2f}x |", "", f"Generator: {d['generator']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model_name_or_path", dest="model", default=None)
    ap.add_argument("--train_file", default=None, help="one sentence a line (default: bench_train's built-in set)")
    ap.add_argument("--batches", default="64,128,256")
    ap.add_argument("--lengths", default="32,64,128")
    ap.add_argument("--ks", default="32,128", help="ClusterNS K values")
    ap.add_argument("--generator_layers", type=int, default=6)
    ap.add_argument("--long_join", type=int, default=6, help="corpus sentences per line of the length sweep")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--in_process", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--update_md", default=None)
    ap.add_argument("--section", default=SECTION)
    a = ap.parse_args(argv)
    a.batches, a.lengths, a.ks = integers(a.batches, "--batches"), integers(a.lengths, "--lengths"), integers(a.ks, "--ks")
    for flag in ("generator_layers", "long_join", "steps", "repeat"):
        if getattr(a, flag) < 1:
            ap.error(f"--{flag} must be >= 1, got {getattr(a, flag)}")
    if a.train_file and not os.path.isfile(a.train_file):
        ap.error(f"--train_file {a.train_file!r} is not a file")
    a.model = a.model or default_model()
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as work:
        report = measure(a, work)
    report.update(model=a.model, warmup=a.warmup, steps=a.steps, repeat=a.repeat, long_join=a.long_join,
                  command=command_line("scripts/bench_scaling.py", argv), measured_at=utc_now(), machine=machine(), section=a.section)
    publish(report, markdown(report), a.section, a.markdown, a.update_md, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
