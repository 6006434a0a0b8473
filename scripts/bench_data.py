"""Corpora larger than memory: peak RSS and throughput of corpus loading + tokenization, the cache's second run,
and the peak RSS of a short training run, on synthetic corpora of growing size.

    python scripts/bench_data.py --source ../shared/data/corpus/en_sentences.txt --sizes 100000,1000000,5000000 \
        --workers 1,2 --train_steps 20 --markdown --update_md BENCHMARKS.md

Each corpus (the source's lines cycled, a repeat counter appended so that the lines stay distinct) is written once
into --work_dir. Each measurement runs in a fresh subprocess (its own peak RSS) with its own `datasets` cache:
- load + tokenize (training/data.py's load_corpus and tokenize_corpus, the training path) with 1 worker at every
  size: peak RSS (VmHWM, and the peak of the anonymous part sampled every 20 ms: the memory-mapped Arrow pages are
  file-backed and reclaimable, the anonymous part is what the corpus would cost if held as Python objects);
- the same with each --workers count at --throughput_size: sentences/s;
- the same again on the warm cache: its time over the first run's;
- train.py for --train_steps steps (MiniLM, batch 64, length 32) on the smallest and the largest corpus, the corpus
  already in the cache (a first run of one step put it there): peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench.sentences import BUILTIN_SENTENCES, default_model  # noqa: E402
from benchmarks_md import command_line, machine, publish, utc_now  # noqa: E402

SECTION = "bench_data"


# ---- worker side --------------------------------------------------------------------------------
class AnonymousPeak:
    """The largest RssAnon of this process, sampled every `interval` seconds in a thread."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_kb, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                    return

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "AnonymousPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def peak_mb() -> dict:
    """VmHWM of this process and the largest of its finished children (the `datasets` workers), in MB."""
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def preprocess_worker(job: dict) -> dict:
    from transformers import AutoTokenizer

    from clusterns.training.data import load_corpus, tokenize_corpus

    with AnonymousPeak() as anon:
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(job["model"])
        corpus = load_corpus(job["corpus"])
        tokenized = tokenize_corpus(corpus, tokenizer, job["max_seq_length"], job["workers"])
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": len(tokenized), "peak_rss_mb": peak_mb(), "peak_anon_mb": anon.peak_kb / 1024}


def train_worker(job: dict) -> dict:
    from clusterns.cli.train import train_main

    argv = ["--model_name_or_path", job["model"], "--train_file", job["corpus"], "--output_dir", job["output_dir"],
            "--overwrite_output_dir", "--use_cpu", "--do_train", "--per_device_train_batch_size", "64", "--max_seq_length",
            str(job["max_seq_length"]), "--max_steps", str(job["steps"]), "--save_strategy", "no", "--eval_strategy", "no",
            "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", str(job["steps"]), "--dataloader_num_workers", "0"]
    with AnonymousPeak() as anon:
        start = time.perf_counter()
        train_main(argv)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": peak_mb(), "peak_anon_mb": anon.peak_kb / 1024}


WORKERS = {"preprocess": preprocess_worker, "train": train_worker}


# ---- driver side --------------------------------------------------------------------------------
def write_corpus(source: list[str], lines: int, path: str) -> str:
    """`lines` lines: the source cycled, the repeat number appended from the second pass on (distinct lines)."""
    if os.path.isfile(path):
        return path
    n = len(source)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(lines):
            repeat = i // n
            f.write(source[i % n] if repeat == 0 else f"{source[i % n]} {repeat}")
            f.write("\n")
    os.replace(tmp, path)
    return path


def run_worker(kind: str, job: dict, cache_dir: str, threads: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
        job_file = f.name
    env = dict(os.environ, HF_DATASETS_CACHE=cache_dir, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind, "--job", job_file],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} worker failed ({job}):\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        os.unlink(job_file)


def human(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def measure(a) -> dict:
    with open(a.source, encoding="utf-8") as f:
        source = [line.rstrip("\n") for line in f if line.strip()]
    sizes = sorted(int(s) for s in a.sizes.split(","))
    workers = [int(w) for w in a.workers.split(",")]
    os.makedirs(a.work_dir, exist_ok=True)
    corpora = {n: write_corpus(source, n, os.path.join(a.work_dir, f"corpus-{human(n)}.txt")) for n in sizes}
    job = {"model": a.model, "max_seq_length": a.max_seq_length}
    report: dict = {"sizes": sizes, "workers": workers, "model": a.model, "max_seq_length": a.max_seq_length,
                    "source": a.source, "loading": {}, "throughput": {}, "cache": {}, "training": {}}

    def fresh_cache(name: str) -> str:
        path = os.path.join(a.work_dir, f"cache-{name}")
        shutil.rmtree(path, ignore_errors=True)
        return path

    for n in sizes:  # peak RSS of loading + tokenizing, one worker, cold cache
        cache = fresh_cache(f"{human(n)}-w1")
        result = run_worker("preprocess", {**job, "corpus": corpora[n], "workers": None}, cache, a.threads)
        report["loading"][str(n)] = result
        print(f"[load] {human(n)} lines: {result['seconds']:.1f} s, peak RSS {result['peak_rss_mb']['self']:.0f} MB "
              f"(anonymous {result['peak_anon_mb']:.0f} MB)", file=sys.stderr, flush=True)
        if n == a.throughput_size:  # the second run on the warm cache
            again = run_worker("preprocess", {**job, "corpus": corpora[n], "workers": None}, cache, a.threads)
            report["cache"] = {"size": n, "first_s": result["seconds"], "second_s": again["seconds"],
                               "ratio": again["seconds"] / result["seconds"]}
            print(f"[cache] {human(n)}: second run {again['seconds']:.2f} s = {100 * report['cache']['ratio']:.1f}% of the first",
                  file=sys.stderr, flush=True)
            # throughput at this size, cold cache each time (right after its 1-worker run: the timed part comes first)
            for w in workers:
                if w == 1:
                    timed = result
                else:
                    timed = run_worker("preprocess", {**job, "corpus": corpora[n], "workers": w}, fresh_cache(f"{human(n)}-w{w}"), a.threads)
                report["throughput"][str(w)] = {"seconds": timed["seconds"], "sentences_per_s": timed["rows"] / timed["seconds"],
                                                "peak_rss_mb": timed["peak_rss_mb"]}
                print(f"[throughput] {w} worker(s): {timed['rows'] / timed['seconds']:.0f} sentences/s", file=sys.stderr, flush=True)
    if a.train_steps:
        for n in (sizes[0], sizes[-1]):
            cache = os.path.join(a.work_dir, f"cache-{human(n)}-w1")
            train_job = {**job, "corpus": corpora[n], "steps": a.train_steps, "output_dir": os.path.join(a.work_dir, f"train-{human(n)}")}
            # A first run tokenizes the corpus as train.py does (its tokenizer's fingerprint may differ from the loading
            # run's); the measured second run trains on the cached corpus, as every run after the first does.
            run_worker("train", {**train_job, "steps": 1}, cache, a.threads)
            result = run_worker("train", train_job, cache, a.threads)
            report["training"][str(n)] = result
            print(f"[train] {human(n)} lines, {a.train_steps} steps: {result['seconds']:.1f} s, peak RSS "
                  f"{result['peak_rss_mb']['self']:.0f} MB", file=sys.stderr, flush=True)
    small, large = str(sizes[0]), str(sizes[-1])
    load = report["loading"]
    report["ratios"] = {"loading_rss_largest_vs_smallest": load[large]["peak_rss_mb"]["self"] / load[small]["peak_rss_mb"]["self"],
                        "loading_anon_largest_vs_smallest": load[large]["peak_anon_mb"] / load[small]["peak_anon_mb"]}
    if report["training"]:
        t = report["training"]
        report["ratios"]["training_rss_largest_vs_smallest"] = t[large]["peak_rss_mb"]["self"] / t[small]["peak_rss_mb"]["self"]
    if report["cache"]:
        report["ratios"]["cache_second_vs_first"] = report["cache"]["ratio"]
    return report


def markdown(report: dict) -> str:
    sizes = report["sizes"]
    small, large = human(sizes[0]), human(sizes[-1])
    lines = [
        "## Corpora larger than memory: loading, tokenization, cache (CPU)",
        "",
        f"Measured {report['measured_at']} on {report['machine'].get('cpu', '?')} ({report['machine'].get('cores', '?')} cores), "
        f"tokenizer of {os.path.basename(report['model'].rstrip('/'))}, max length {report['max_seq_length']}; synthetic corpora "
        f"from `{report['source']}` (its lines cycled, made distinct). Command: `{report['command']}`",
        "",
        "| corpus | load + tokenize (s) | peak RSS (MB) | peak anonymous RSS (MB) |",
        "|---|---|---|---|",
    ]
    for n in sizes:
        r = report["loading"][str(n)]
        lines.append(f"| {human(n)} lines | {r['seconds']:.1f} | {r['peak_rss_mb']['self']:.0f} | {r['peak_anon_mb']:.0f} |")
    lines += ["", "| workers (--preprocessing_num_workers) | sentences/s | main process peak RSS (MB) | largest worker peak RSS (MB) |",
              "|---|---|---|---|"]
    for w, r in report["throughput"].items():
        lines.append(f"| {w} | {r['sentences_per_s']:.0f} | {r['peak_rss_mb']['self']:.0f} | "
                     f"{r['peak_rss_mb']['children']:.0f} |" if int(w) > 1 else
                     f"| {w} | {r['sentences_per_s']:.0f} | {r['peak_rss_mb']['self']:.0f} | - |")
    if report["training"]:
        lines += ["", "| training run | time (s) | peak RSS (MB) |", "|---|---|---|"]
        for n, r in report["training"].items():
            lines.append(f"| {human(int(n))} lines, {report['train_steps']} steps (batch 64) | {r['seconds']:.1f} | {r['peak_rss_mb']['self']:.0f} |")
    r = report["ratios"]
    lines += ["", "| target (issue 22) | threshold | measured | met |", "|---|---|---|---|",
              f"| loading peak RSS, {large} vs {small} lines | <= 1.2x | {r['loading_rss_largest_vs_smallest']:.2f}x "
              f"(anonymous {r['loading_anon_largest_vs_smallest']:.2f}x) | {'yes' if r['loading_rss_largest_vs_smallest'] <= 1.2 else 'no'} |"]
    if "cache_second_vs_first" in r:
        c = report["cache"]
        lines.append(f"| second run on the cache, {human(c['size'])} lines | <= 5% of the first | {100 * c['ratio']:.1f}% "
                     f"({c['second_s']:.2f} s vs {c['first_s']:.1f} s) | {'yes' if c['ratio'] <= 0.05 else 'no'} |")
    if "training_rss_largest_vs_smallest" in r:
        lines.append(f"| training peak RSS, {large} vs {small} lines | <= 1.1x | {r['training_rss_largest_vs_smallest']:.2f}x | "
                     f"{'yes' if r['training_rss_largest_vs_smallest'] <= 1.1 else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=None, help="a one-sentence-a-line file the corpora are made of (default: the built-in set)")
    ap.add_argument("--sizes", default="100000,1000000,5000000", help="corpus sizes in lines, comma-separated")
    ap.add_argument("--workers", default="1,2", help="--preprocessing_num_workers values for the throughput figure")
    ap.add_argument("--throughput_size", type=int, default=None, help="the corpus size of the throughput and cache figures (default: the middle size)")
    ap.add_argument("--train_steps", type=int, default=20, help="training steps on the smallest and largest corpus (0: skip)")
    ap.add_argument("--model", default=None, help="the model (tokenizer and, for the training figure, weights); default: MiniLM")
    ap.add_argument("--max_seq_length", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work_dir", default=None, help="where the corpora and caches go (default: a temporary folder, removed)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--update_md", default=None)
    ap.add_argument("--section", default=SECTION)
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        with open(a.job) as f:
            print(json.dumps(WORKERS[a.worker](json.load(f))))
        return 0
    try:
        sizes = sorted(int(s) for s in a.sizes.split(","))
        workers = [int(w) for w in a.workers.split(",")]
    except ValueError:
        print(f"error: --sizes and --workers take comma-separated integers, got {a.sizes!r} / {a.workers!r}", file=sys.stderr)
        return 2
    if not sizes or min(sizes) < 1 or not workers or min(workers) < 1:
        print("error: --sizes and --workers must be positive", file=sys.stderr)
        return 2
    if a.source is None:
        handle = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        handle.write("\n".join(BUILTIN_SENTENCES) + "\n")
        handle.close()
        a.source = handle.name
    elif not os.path.isfile(a.source):
        print(f"error: --source {a.source!r} is not a file", file=sys.stderr)
        return 2
    a.model = a.model or default_model()
    a.throughput_size = a.throughput_size or sizes[len(sizes) // 2]
    if a.throughput_size not in sizes:
        print(f"error: --throughput_size {a.throughput_size} is not one of --sizes {a.sizes}", file=sys.stderr)
        return 2
    owned = a.work_dir is None
    a.work_dir = a.work_dir or tempfile.mkdtemp(prefix="bench-data-")
    try:
        report = measure(a)
    finally:
        if owned:
            shutil.rmtree(a.work_dir, ignore_errors=True)
    report.update(command=command_line("scripts/bench_data.py", argv), measured_at=utc_now(), machine=machine(),
                  train_steps=a.train_steps, section=a.section)
    publish(report, markdown(report), a.section, a.markdown, a.update_md, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
