"""The harness: each configuration in a fresh subprocess (its own peak RSS), the other processes' load
measured around it, and the fastest of the interleaved repeats kept."""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from bench.sentences import load_sentences
from bench.steps import CLUSTERNS_K, run_ours, run_sentence_transformers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "bench_train.py")  # the workers' entry point


def worker_main(a) -> int:
    result = run_config(a)
    with open(a.worker_json, "w") as f:
        json.dump(result, f)
    return 0

def run_config(a) -> dict:
    """One configuration (a.worker) in this process."""
    needed, k = (a.warmup + a.steps) * a.batch_size, getattr(a, "clusterns_k", CLUSTERNS_K)
    pool = load_sentences(a.train_file, needed + k)
    sentences, init_sentences = pool[:needed], pool[needed:needed + k]
    import torch

    previous = torch.get_num_threads()
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        if a.worker == "st":
            return run_sentence_transformers(a, sentences)
        return run_ours(a.worker, a, sentences, init_sentences)
    finally:
        torch.set_num_threads(previous)  # --in_process: leave the caller's setting as it was

def cpu_busy_seconds() -> float | None:
    """CPU seconds spent busy by the whole machine since boot (/proc/stat), None where unavailable."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")

def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime

def foreign_cores(seconds: float = 3.0) -> float | None:
    """Cores kept busy by other processes over the next `seconds` (this orchestrator is idle meanwhile)."""
    before = cpu_busy_seconds()
    if before is None:
        return None
    time.sleep(seconds)
    return (cpu_busy_seconds() - before) / seconds

def wait_for_quiet(a) -> float | None:
    """With --max_foreign_cores: wait (up to --wait_timeout s) until other processes use fewer cores than that."""
    if a.max_foreign_cores is None:
        return None
    start = time.monotonic()
    while True:
        busy = foreign_cores()
        if busy is None or busy <= a.max_foreign_cores or time.monotonic() - start > a.wait_timeout:
            return busy
        print(f"waiting: other processes use {busy:.2f} cores (> {a.max_foreign_cores})", file=sys.stderr, flush=True)
        time.sleep(10)

def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")

def run_worker(a, config: str, batch_size: int | None = None, steps: int | None = None, warmup: int | None = None,
               matmul: bool = True) -> dict:
    if a.in_process:  # tests: no subprocess start-up; peak RSS is then the process's, not the configuration's
        ns = argparse.Namespace(**vars(a))
        ns.worker, ns.matmul = config, matmul and a.matmul
        ns.batch_size, ns.steps = batch_size or a.batch_size, steps or a.steps
        ns.warmup = a.warmup if warmup is None else warmup
        result = run_config(ns)
        result.update(load_average=[load_average(), load_average()], foreign_cores=None, foreign_cores_before=None)
        return result
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [sys.executable, SCRIPT, "--worker", config, "--worker_json", path,
           "--model_name_or_path", a.model, "--batch_size", str(batch_size or a.batch_size),
           "--max_seq_length", str(a.max_seq_length), "--warmup", str(a.warmup if warmup is None else warmup),
           "--steps", str(steps or a.steps), "--learning_rate", str(a.learning_rate), *(["--optim", a.optim] if a.optim else []),
           "--num_workers", str(a.num_workers), "--threads", str(a.threads),
           "--mini_batch_size", str(getattr(a, "mini_batch_size", 64)), "--clusterns_k", str(getattr(a, "clusterns_k", CLUSTERNS_K)),
           "--generator_layers", str(getattr(a, "generator_layers", 2)), "--logging_steps", str(getattr(a, "logging_steps", 1000000))]
    if a.train_file:
        cmd += ["--train_file", a.train_file]
    if not matmul:
        cmd += ["--no_matmul"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    quiet = wait_for_quiet(a)
    load_before = load_average()
    busy0, child0, t0 = cpu_busy_seconds(), children_cpu_seconds(), time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - t0
        busy1, child1 = cpu_busy_seconds(), children_cpu_seconds()
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-30:])
            raise RuntimeError(f"configuration {config} (batch {batch_size or a.batch_size}) failed:\n{tail}")
        with open(path) as f:
            result = json.load(f)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    result["load_average"] = [load_before, load_average()]
    # cores used by other processes while the worker ran (machine busy time minus the worker's CPU time)
    result["foreign_cores"] = None if busy0 is None else max(0.0, (busy1 - busy0 - (child1 - child0)) / wall)
    result["foreign_cores_before"] = quiet
    return result

def summarise(runs: list[dict]) -> dict:
    """The fastest repeat (mean wall time per measured step) with its CPU time and counts."""
    best = min(runs, key=lambda r: statistics.mean(r["wall_per_step"]))
    all_steps = [t for r in runs for t in r["wall_per_step"]]
    out = {
        "wall_s_per_step": statistics.mean(best["wall_per_step"]),
        "cpu_s_per_step": statistics.mean(best["cpu_per_step"]),
        "fastest_single_step_s": min(all_steps),
        "median_step_s": statistics.median(all_steps),
        "repeats_wall_s_per_step": [round(statistics.mean(r["wall_per_step"]), 4) for r in runs],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "tokens_per_step": statistics.mean(best["tokens"]),
        "padded_tokens_per_step": statistics.mean(best["padded_tokens"]),
        "packed_linear": best["packed_linear"],
        "last_layer_reads": best.get("last_layer_reads", False),
        "load_average": [round(x, 2) for r in runs for x in r["load_average"]],
        "foreign_cores": best.get("foreign_cores"),
        "foreign_cores_all": [r.get("foreign_cores") for r in runs],
    }
    for key in ("matmul", "diffcse_parts", "shapes", "rows", "lengths", "torch_threads", "sentence_transformers", "optim",
                "guard_ms_per_step", "collate_ms_per_step", "tokenize_ms_per_step"):
        if key in best:
            out[key] = best[key]
    if "matmul" in out:  # the fastest matmul measurement of all repeats
        out["matmul"] = min((r["matmul"] for r in runs if "matmul" in r), key=lambda m: m["seconds"])
    return out
