"""The prepared GPU measurement: one command, under 10 minutes on one CUDA GPU, no network.

    python scripts/bench_gpu.py --update_md BENCHMARKS.md            # on the GPU machine
    python scripts/bench_gpu.py --smoke                               # anywhere (CI): a tiny model on the CPU

What it measures (BERT-base built from a config with random weights, the offline MiniLM's uncased WordPiece
tokenizer, which is bert-base-uncased's vocabulary; the shared English corpus or the built-in sentences):
- training sentences/s and peak GPU memory of infonce, clusterns (clustering active, K=128 at batch 256 and
  K=32 at 64), mixcse, diffcse (a 6-layer generator: the recipe's shape) and the prompt encoder through the
  framework's Trainer path, and of sentence-transformers' MultipleNegativesRankingLoss through its own trainer
  (which tokenizes inside its step), at batch 64 and 256, length 32, in bf16 and fp32/TF32;
  model FLOP utilisation of infonce from the encoder's matmul FLOPs and the GPU's dense bf16 peak (--peak_tflops);
- the host syncs per optimizer step of an infonce run (training/host_syncs.py; expected 0 on CUDA);
- the STS suite (evaluation.py --task_set sts) with --precision fp32 and auto, when SentEval data is found;
- the project's CUDA tests (pytest -m cuda).
The framework (and sentence-transformers' trainer) need `datasets`: if it is missing, wheels placed in
scripts/wheels/ are installed from there (pip --no-index), or the script says what to place there.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
SECTION = "bench_gpu"
WHEELS = os.path.join(HERE, "wheels")


def ensure_datasets() -> None:
    """`datasets` from wheels beside the script when it is not installed (the GPU machine has no network)."""
    if importlib.util.find_spec("datasets") is not None:
        return
    if os.path.isdir(WHEELS):
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", WHEELS, "datasets"], check=True)
        return
    raise SystemExit(f"error: the framework needs `datasets`, which is not installed and there are no wheels in {WHEELS}: "
                     "on a machine with network, `pip download datasets -d scripts/wheels` and copy the folder beside this script")


ensure_datasets()

import torch  # noqa: E402

from bench.flops import encoder_flops, encoder_shapes  # noqa: E402
from bench.scratch import scratch_dir  # noqa: E402
from bench.sentences import default_model, load_sentences  # noqa: E402
from bench.steps import tiny_generator_from_config  # noqa: E402
from benchmarks_md import command_line, machine, publish, utc_now  # noqa: E402

CONFIG_FLAGS = {
    "infonce": ["--objective", "infonce"],
    "clusterns": ["--objective", "clusterns", "--kmeans", "{k}", "--kmean_cosine", "1.0"],
    "mixcse": ["--objective", "mixcse", "--lambdas", "0.2"],
    "diffcse": ["--objective", "diffcse", "--batchnorm", "--lambda_weight", "0.005", "--masking_ratio", "0.3"],
    "prompt": ["--objective", "infonce", "--mask_embedding_sentence", "--mask_embedding_sentence_delta", "--prompt_templates", "per_backbone"],
}


def build_backbone(tokenizer_dir: str, out: str, smoke: bool) -> str:
    """BERT-base (or, --smoke, a 2-layer 64-wide BERT) with random weights and the given tokenizer, saved to `out`."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if smoke else \
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **size)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def trainer_argv(a, model_dir: str, batch: int, steps: int, flags: list[str]) -> list[str]:
    """train.py's flags of a measured run: no saving, evaluation or logging inside it, a fresh output folder."""
    return ["--model_name_or_path", model_dir, "--output_dir", scratch_dir("bench_gpu_"), "--overwrite_output_dir",
            "--max_seq_length", str(a.max_seq_length), "--per_device_train_batch_size", str(batch), "--max_steps", str(steps),
            "--learning_rate", "3e-5", "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none",
            "--disable_tqdm", "true", "--logging_steps", "1000000", "--dataloader_drop_last", "--seed", "42", *flags]


def time_ours(config: str, a, model_dir: str, batch: int, precision: str, sentences: list[str]) -> dict:
    """Sentences/s of --steps Trainer steps after --warmup, peak GPU memory, through build_run."""
    from transformers import AutoConfig, AutoTokenizer, TrainerCallback

    from clusterns.training.run import build_run

    marks: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sync(a.device)
            marks.append(time.perf_counter())

    k = min(128 if batch >= 128 else 32, batch)  # ClusterNS's K: the published 128 at large batches
    flags = [f.format(k=k) for f in CONFIG_FLAGS[config]]
    argv = trainer_argv(a, model_dir, batch, a.warmup + a.steps, flags)
    argv += ["--use_cpu"] if a.device == "cpu" else (["--bf16"] if precision == "bf16" else ["--auto_mixed_precision", "false"])
    objective_kwargs = {}
    if config == "diffcse":
        objective_kwargs = {"generator": tiny_generator_from_config(AutoConfig.from_pretrained(model_dir), layers=a.generator_layers),
                            "generator_tokenizer": AutoTokenizer.from_pretrained(model_dir)}
    run = build_run(argv, sentences=sentences, objective_kwargs=objective_kwargs, callbacks=[Timer()])
    if config == "clusterns":  # start the clustering on the first batch's worth of sentences
        encoder = run.encoder
        init = [{"sent0_ids": ids} for ids in encoder.tokenizer(sentences[:max(k, batch)], truncation=True,
                                                                max_length=a.max_seq_length)["input_ids"]]
        batch_in = {key: v.to(run.training_args.device) if torch.is_tensor(v) else v for key, v in run.collator(init).items()}
        run.model.to(run.training_args.device).train()
        with torch.no_grad():
            run.model(**batch_in)
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run.trainer.train()
    seconds = marks[-1] - marks[a.warmup - 1] if a.warmup > 0 else marks[-1] - marks[0]
    steps = a.steps if a.warmup > 0 else a.steps - 1
    result = {"sentences_per_s": batch * steps / seconds, "s_per_step": seconds / steps,
              "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if a.device == "cuda" else None}
    if config == "clusterns":
        result["clustering_active"] = bool(run.objective.started)
    del run
    if a.device == "cuda":
        torch.cuda.empty_cache()
    return result


def time_sentence_transformers(a, model_dir: str, batch: int, precision: str, sentences: list[str]) -> dict:
    """MultipleNegativesRankingLoss (in-batch negatives, scale 20 = 1/0.05) through SentenceTransformerTrainer,
    which tokenizes inside its step (its collator), as scripts/bench_train.py's CPU configuration `st`."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    marks: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sync(a.device)
            marks.append(time.perf_counter())

    model = SentenceTransformer(model_dir, device=a.device)  # the backbone with mean pooling
    model.max_seq_length = a.max_seq_length
    texts = sentences[:(a.warmup + a.steps) * batch]
    args = SentenceTransformerTrainingArguments(
        output_dir=scratch_dir("bench_gpu_st_"), use_cpu=a.device == "cpu", bf16=precision == "bf16",
        per_device_train_batch_size=batch, max_steps=a.warmup + a.steps, learning_rate=3e-5, logging_steps=1000000,
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_drop_last=True, seed=42)
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"anchor": texts, "positive": texts}),
                                         loss=MultipleNegativesRankingLoss(model), callbacks=[Timer()])
    trainer.train()
    kept = marks[a.warmup - 1:] if a.warmup > 0 else marks
    steps = len(kept) - 1
    seconds = kept[-1] - kept[0]
    result = {"sentences_per_s": batch * steps / seconds, "s_per_step": seconds / steps,
              "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if a.device == "cuda" else None}
    del trainer, model
    if a.device == "cuda":
        torch.cuda.empty_cache()
    return result


def sts_suite_seconds(a, model_dir: str) -> dict:
    from clusterns.cli import evaluate as evaluation

    data = a.senteval_dir
    if not data or not os.path.isdir(os.path.join(data, "STS")):
        return {"skipped": f"no SentEval data at {data!r} (--senteval_dir)"}
    out = {}
    for precision in ("fp32", "auto"):
        start = time.perf_counter()
        rc = evaluation.main(["--model_name_or_path", model_dir, "--pooler", "cls", "--task_set", "sts", "--mode", "test",
                              "--data_dir", data, "--precision", precision, "--device", a.device])
        out[precision] = {"seconds": time.perf_counter() - start, "rc": rc}
    return out


def cuda_tests(a) -> dict:
    if a.device != "cuda":
        return {"skipped": "no CUDA device"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"], cwd=REPO,
                          capture_output=True, text=True)
    return {"rc": proc.returncode, "summary": (proc.stdout.strip().splitlines() or [""])[-1]}


def host_syncs_per_step(a, model_dir: str, sentences: list[str], config: str = "infonce", steps: int = 3) -> dict:
    """Operators that make the host wait for the device, per optimizer step (training/host_syncs.py; outside the timed
    runs: the counting slows every operator down). On CUDA --nan_check auto is deferred: expected 0."""
    from clusterns.training.host_syncs import CountHostSyncsCallback
    from clusterns.training.run import build_run

    counter = CountHostSyncsCallback()
    argv = trainer_argv(a, model_dir, 64, steps, CONFIG_FLAGS[config])
    argv += ["--use_cpu", "--nan_check", "deferred"] if a.device == "cpu" else ["--bf16"]
    run = build_run(argv, sentences=sentences, callbacks=[counter])
    run.trainer.train()
    return {"config": config, "per_step": counter.per_step, "operators": dict(counter.counter.counts),
            "first_stacks": [stack for _, stack in counter.counter.where[:2]]}


def measure(a) -> dict:
    model_dir = build_backbone(a.tokenizer, scratch_dir("bench_gpu_model_"), a.smoke)
    needed = (a.warmup + a.steps) * max(a.batches) + 256
    sentences = load_sentences(a.train_file, needed)
    report: dict = {"device": a.device, "device_name": torch.cuda.get_device_name() if a.device == "cuda" else "CPU (smoke)",
                    "batches": a.batches, "precisions": a.precisions, "runs": {}}
    for precision in a.precisions:
        for batch in a.batches:
            for config in a.configs:
                key = f"{config}/b{batch}/{precision}"
                try:
                    if config == "st":
                        result = time_sentence_transformers(a, model_dir, batch, precision, sentences)
                    else:
                        result = time_ours(config, a, model_dir, batch, precision, sentences)
                except torch.cuda.OutOfMemoryError:
                    result = {"error": "out of memory"}
                    torch.cuda.empty_cache()
                report["runs"][key] = result
                print(f"[{key}] {json.dumps(result)}", file=sys.stderr, flush=True)
    from transformers import AutoConfig

    shapes = encoder_shapes(AutoConfig.from_pretrained(model_dir))
    for key, result in report["runs"].items():
        config, batch, precision = key.split("/")
        if config == "infonce" and "s_per_step" in result and a.peak_tflops:
            rows = int(batch[1:]) * 2  # two views
            flop = 3 * encoder_flops(shapes, rows * a.max_seq_length, [a.max_seq_length] * rows)  # forward + backward
            result["model_flop_utilisation"] = flop / result["s_per_step"] / (a.peak_tflops * 1e12)
    for precision in a.precisions:
        for batch in a.batches:
            ours, st = report["runs"].get(f"infonce/b{batch}/{precision}", {}), report["runs"].get(f"st/b{batch}/{precision}", {})
            if "sentences_per_s" in ours and "sentences_per_s" in st:
                report.setdefault("ratios", {})[f"infonce_vs_st/b{batch}/{precision}"] = ours["sentences_per_s"] / st["sentences_per_s"]
    report["host_syncs"] = host_syncs_per_step(a, model_dir, sentences)
    print(f"[host syncs] {json.dumps(report['host_syncs'])}", file=sys.stderr, flush=True)
    report["sts_suite"] = sts_suite_seconds(a, model_dir)
    report["cuda_tests"] = cuda_tests(a)
    return report


def markdown(report: dict) -> str:
    lines = ["## GPU: training throughput, memory, STS suite (scripts/bench_gpu.py)", "",
             f"`{report['command']}` ({report['measured_at']}) on **{report['device_name']}**" +
             (" (a smoke run: tiny model on the CPU; no GPU figure)" if report["device"] != "cuda" else ""), "",
             "| configuration | batch | precision | sentences/s | s/step | peak GPU memory (MB) |", "|---|---|---|---|---|---|"]
    for key, r in report["runs"].items():
        config, batch, precision = key.split("/")
        if "error" in r:
            lines.append(f"| {config} | {batch[1:]} | {precision} | {r['error']} | | |")
            continue
        mem = f"{r['peak_gpu_mb']:.0f}" if r.get("peak_gpu_mb") is not None else "-"
        lines.append(f"| {config} | {batch[1:]} | {precision} | {r['sentences_per_s']:.1f} | {r['s_per_step']:.3f} | {mem} |")
    for key, ratio in report.get("ratios", {}).items():
        lines.append(f"\n- {key.replace('/', ', ')}: {ratio:.2f}x sentence-transformers' sentences/s")
    for key, r in report["runs"].items():
        if "model_flop_utilisation" in r:
            lines.append(f"- {key}: model FLOP utilisation {100 * r['model_flop_utilisation']:.1f}% of {report['peak_tflops']} TFLOP/s")
    syncs = report.get("host_syncs", {})
    lines.append(f"- host syncs per optimizer step ({syncs.get('config')}, batch 64, outside the timed runs): "
                 f"{syncs.get('per_step')} {json.dumps(syncs.get('operators'))}")
    lines.append(f"- STS suite: {json.dumps(report['sts_suite'])}")
    lines.append(f"- CUDA tests (pytest -m cuda): {json.dumps(report['cuda_tests'])}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, 2 steps at batch 8: checks the script runs")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the offline MiniLM's, uncased WordPiece)")
    ap.add_argument("--train_file", default=None, help="sentences (default: ../shared/data/corpus/en_sentences.txt if present)")
    ap.add_argument("--senteval_dir", default=None, help="SentEval data (folder with STS/; default: ../shared/data/senteval)")
    ap.add_argument("--configs", default="infonce,clusterns,mixcse,diffcse,prompt,st")
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--precisions", default="bf16,fp32")
    ap.add_argument("--max_seq_length", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--generator_layers", type=int, default=6, help="DiffCSE's generator depth (the recipe's: 6)")
    ap.add_argument("--peak_tflops", type=float, default=None, help="the GPU's dense bf16 peak, for the FLOP utilisation")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--update_md", default=None)
    ap.add_argument("--section", default=SECTION)
    a = ap.parse_args(argv)
    a.device = "cuda" if torch.cuda.is_available() and not a.smoke else "cpu"
    if a.smoke:
        a.batches, a.precisions, a.warmup, a.steps, a.generator_layers = "8", "fp32", 1, 2, 1
    shared = os.path.join(os.path.dirname(REPO), "shared", "data")
    a.train_file = a.train_file or (os.path.join(shared, "corpus", "en_sentences.txt")
                                    if os.path.isfile(os.path.join(shared, "corpus", "en_sentences.txt")) else None)
    a.senteval_dir = a.senteval_dir or os.path.join(shared, "senteval")
    a.tokenizer = a.tokenizer or default_model()
    try:
        a.batches = [int(b) for b in str(a.batches).split(",")]
    except ValueError:
        print(f"error: --batches takes comma-separated integers, got {a.batches!r}", file=sys.stderr)
        return 2
    a.precisions = [p for p in str(a.precisions).split(",") if p]
    a.configs = [c for c in a.configs.split(",") if c]
    unknown = [c for c in a.configs if c not in CONFIG_FLAGS and c != "st"]
    if unknown or any(p not in ("bf16", "fp32") for p in a.precisions) or min(a.batches) < 2:
        print(f"error: --configs from {', '.join([*CONFIG_FLAGS, 'st'])}; --precisions bf16,fp32; --batches >= 2 "
              f"(got {a.configs}, {a.precisions}, {a.batches})", file=sys.stderr)
        return 2
    if a.device == "cpu" and not a.smoke:
        print("no CUDA GPU here: run with --smoke to check the script, or on a GPU machine for the figures", file=sys.stderr)
        return 2
    report = measure(a)
    report.update(command=command_line("scripts/bench_gpu.py", argv), measured_at=utc_now(), machine=machine(),
                  peak_tflops=a.peak_tflops, section=a.section, smoke=a.smoke, sentences=a.train_file or "built-in set")
    publish(report, markdown(report), a.section, a.markdown or not a.update_md, a.update_md, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
