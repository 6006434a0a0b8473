"""Where a training step's time goes: torch.profiler over the real Trainer path, self time by category.

    python scripts/profile_step.py --train_file ../shared/data/corpus/en_sentences.txt --markdown --update_md BENCHMARKS.md

The run is train.py's (clusterns.training.run.build_run: MiniLM by default, --objective infonce, batch 64, length
32, AdamW, gradient clipping at 1.0 as HF's default); after --warmup steps the profiler records --steps steps, then as many run without it (their time is reported beside). Each
profiler event's *self* time (its duration minus its children's) goes to one category: the labelled region it
runs in (collation, gradient clipping, the optimizer step, the loss, the packing gathers/scatters) or else its
operator (matrix products of the linear layers; attention math: the batched products, softmax and masking of
SDPA's math path; layernorm, GELU, dropout and the other element-wise operators; the embedding and its dense
gradient). What no operator accounts for (the Trainer's and the model's Python, the autograd engine) is
"Python and framework overhead". Self times are wall times of the calling thread: an operator's intra-op threads
are inside its own time.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench.scratch import scratch_dir  # noqa: E402
from bench.sentences import default_model, load_sentences  # noqa: E402
from benchmarks_md import command_line, machine, publish, section_start, utc_now  # noqa: E402

SECTION = "profile_step"
LABEL_PREFIX = "clusterns::"
# Labelled regions (record_function names, or the profiler's own) -> category.
REGIONS = {
    "clusterns::collate": "collation (padding the batch)",
    "clusterns::clip": "gradient clipping",
    "Optimizer.step": "optimizer (AdamW)",
    "Optimizer.zero_grad": "optimizer (AdamW)",
    "clusterns::objective": "loss (logits, cross-entropy)",
    "clusterns::packing": "packing gathers/scatters",
    "_PackBackward": "packing gathers/scatters",
    "_UnpackBackward": "packing gathers/scatters",
    "EmbeddingBackward0": "embedding (incl. its dense gradient)",
}
LINEAR_OPS = ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "aten::_addmm_activation",
              "mkldnn::_linear_pointwise")  # oneDNN's products: --fast_linear, encode()
ATTENTION_OPS = ("aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_softmax_backward_data", "aten::_safe_softmax",
                 "aten::scaled_dot_product_attention", "aten::_scaled_dot_product", "aten::masked_fill")
EMBEDDING_OPS = ("aten::embedding", "aten::embedding_backward", "aten::embedding_dense_backward")
ELEMENTWISE_OPS = ("aten::bernoulli_", "aten::native_layer_norm", "aten::layer_norm", "aten::native_layer_norm_backward", "aten::gelu",
                   "aten::gelu_backward", "aten::native_dropout", "aten::native_dropout_backward", "aten::dropout",
                   "aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::div", "aten::sub", "aten::tanh",
                   "aten::tanh_backward", "aten::sum", "aten::copy_", "aten::clone", "aten::contiguous", "aten::fill_",
                   "aten::zero_", "aten::zeros", "aten::empty", "aten::ones_like", "aten::zeros_like", "aten::empty_like",
                   "aten::to", "aten::_to_copy", "aten::view", "aten::reshape", "aten::transpose", "aten::permute",
                   "aten::t", "aten::expand", "aten::slice", "aten::select", "aten::cat", "aten::split", "aten::unsqueeze",
                   "aten::squeeze", "aten::as_strided", "aten::detach", "aten::_unsafe_view", "aten::narrow")
OVERHEAD = "Python and framework overhead (no operator)"
ORDER = ["linear layers (mm/addmm/oneDNN)", "attention math (bmm, softmax, masking)", "layernorm/GELU/dropout/element-wise",
         "embedding (incl. its dense gradient)", "gradient clipping", "optimizer (AdamW)", "packing gathers/scatters",
         "loss (logits, cross-entropy)", "collation (padding the batch)", "other operators", OVERHEAD]


def category_of_op(name: str) -> str:
    if name.startswith(LINEAR_OPS):
        return ORDER[0]
    if name.startswith(ATTENTION_OPS):
        return ORDER[1]
    if name.startswith(EMBEDDING_OPS):
        return ORDER[3]
    if name in ELEMENTWISE_OPS or name.startswith(("aten::native_layer_norm", "aten::gelu", "aten::native_dropout", "aten::bernoulli")):
        return ORDER[2]
    if name.startswith(("aten::", "mkldnn::")):
        return ORDER[9]
    return OVERHEAD  # ProfilerStep, autograd engine, record_function bodies without a region


def region_of(event) -> str | None:
    """The category of the nearest labelled region around (or at) the event."""
    node = event
    while node is not None:
        for prefix, category in REGIONS.items():
            if node.name.startswith(prefix) or node.name.endswith(prefix):
                return category
        node = node.cpu_parent
    return None


def categorise(events) -> dict[str, float]:
    """Self CPU time (µs) per category over the profiler's events."""
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        self_us = event.self_cpu_time_total
        if self_us <= 0:
            continue
        totals[region_of(event) or category_of_op(event.name)] += self_us
    return dict(totals)


@contextlib.contextmanager
def labelled(name: str):
    import torch

    with torch.profiler.record_function(LABEL_PREFIX + name):
        yield


def wrap(function, name: str):
    def labelled_call(*args, **kwargs):
        with labelled(name):
            return function(*args, **kwargs)

    return labelled_call


def profile(a) -> dict:
    import torch

    threads = torch.get_num_threads()  # restored at the end: the caller (a test) keeps its own
    torch.set_num_threads(a.threads)
    try:
        return _profile(a)
    finally:
        torch.set_num_threads(threads)


def _profile(a) -> dict:
    import torch
    from transformers import TrainerCallback

    from clusterns.modeling import packing
    from clusterns.training.run import build_run

    sentences = load_sentences(a.train_file, (a.warmup + 2 * a.steps) * a.batch_size)
    out_dir = scratch_dir("profile_step_")
    argv = ["--model_name_or_path", a.model, "--objective", a.objective, "--max_seq_length", str(a.max_seq_length),
            "--output_dir", out_dir, "--overwrite_output_dir", "--use_cpu", "--per_device_train_batch_size", str(a.batch_size),
            "--max_steps", str(a.warmup + 2 * a.steps), "--learning_rate", "3e-5", "--save_strategy", "no", "--eval_strategy", "no",
            "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1000000", "--dataloader_drop_last",
            "--dataloader_num_workers", "0", "--seed", "42"]

    state = {"profiler": None, "start": None, "wall": None}

    class Window(TrainerCallback):
        def on_step_begin(self, args, trainer_state, control, **kwargs):
            if trainer_state.global_step == a.warmup and state["profiler"] is None:
                state["profiler"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                state["profiler"].__enter__()
                state["start"] = time.perf_counter()

        def on_step_end(self, args, trainer_state, control, **kwargs):
            if trainer_state.global_step == a.warmup + a.steps and state["profiler"] is not None:
                state["wall"] = time.perf_counter() - state["start"]
                state["profiler"].__exit__(None, None, None)
                state["plain_start"] = time.perf_counter()  # as many steps again without the profiler
            if trainer_state.global_step == a.warmup + 2 * a.steps:
                state["plain_wall"] = time.perf_counter() - state["plain_start"]

    # The labelled regions: the packing index and gathers (module functions the packed layers call), collation,
    # the objective, gradient clipping.
    originals = {name: getattr(packing, name) for name in ("packed_batch", "pack_rows", "unpack_rows")}
    for name, function in originals.items():
        setattr(packing, name, wrap(function, "packing"))
    try:
        run = build_run(argv, sentences=sentences, wrap_collator=lambda c: wrap(c, "collate"), callbacks=[Window()])
        objective = run.model.objective
        objective.forward = wrap(objective.forward, "objective")
        accelerator = run.trainer.accelerator
        accelerator.clip_grad_norm_ = wrap(accelerator.clip_grad_norm_, "clip")
        run.trainer.train()
    finally:
        for name, function in originals.items():
            setattr(packing, name, function)
    prof = state["profiler"]
    if prof is None or state["wall"] is None:
        raise SystemExit("error: the profiled steps did not run (check --warmup and --steps)")
    totals = categorise(prof.events())
    wall_us = state["wall"] * 1e6
    accounted = sum(v for k, v in totals.items() if k != OVERHEAD)
    totals[OVERHEAD] = max(wall_us - accounted, 0.0)  # everything the operators and regions do not cover
    per_step = {k: v / a.steps / 1e3 for k, v in totals.items()}  # ms per step
    return {"model": a.model, "objective": a.objective, "batch_size": a.batch_size, "max_seq_length": a.max_seq_length,
            "warmup": a.warmup, "steps": a.steps, "threads": a.threads, "sentences": a.train_file or "built-in set",
            "step_ms": wall_us / a.steps / 1e3, "ms_per_step": per_step,
            "unprofiled_step_ms": state["plain_wall"] / a.steps * 1e3,
            "top_ops": [(e.key, e.self_cpu_time_total / a.steps / 1e3) for e in
                        sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]]}


def markdown(report: dict) -> str:
    step = report["step_ms"]
    lines = section_start(
        "Where the training step's time goes (CPU profile)", report, report["threads"],
        f"model `{os.path.basename(report['model'].rstrip('/'))}`, "
        f"--objective {report['objective']}, batch {report['batch_size']}, max length {report['max_seq_length']}, "
        f"{report['steps']} profiled steps after {report['warmup']} warm-up; step {step:.0f} ms under the profiler, "
        f"{report['unprofiled_step_ms']:.0f} ms in the {report['steps']} steps after it without (the profiler's bookkeeping "
        "and its slower operators: the shares below are of the profiled step). Self time per category "
        "(scripts/profile_step.py docstring):") + [
        "",
        "| category | ms per step | share of the step |",
        "|---|---|---|",
    ]
    ms = report["ms_per_step"]
    for category in ORDER:
        if category in ms:
            lines.append(f"| {category} | {ms[category]:.1f} | {100 * ms[category] / step:.1f}% |")
    lines += ["", "Largest operators by self time (ms per step): " +
              ", ".join(f"`{name}` {t:.1f}" for name, t in report["top_ops"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="default: the offline MiniLM")
    ap.add_argument("--train_file", default=None, help="sentences (one a line); default: the built-in set")
    ap.add_argument("--objective", default="infonce")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--max_seq_length", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--update_md", default=None)
    ap.add_argument("--section", default=SECTION)
    a = ap.parse_args(argv)
    for name in ("batch_size", "max_seq_length", "steps", "threads"):
        if getattr(a, name) < 1:
            print(f"error: --{name} must be >= 1, got {getattr(a, name)}", file=sys.stderr)
            return 2
    if a.warmup < 0:
        print(f"error: --warmup must be >= 0, got {a.warmup}", file=sys.stderr)
        return 2
    if a.train_file and not os.path.isfile(a.train_file):
        print(f"error: --train_file {a.train_file!r} is not a file", file=sys.stderr)
        return 2
    a.model = a.model or default_model()
    report = profile(a)
    report.update(command=command_line("scripts/profile_step.py", argv), measured_at=utc_now(), machine=machine(), section=a.section)
    md = markdown(report)
    if not a.markdown:
        print(md)
    publish(report, md, a.section, a.markdown, a.update_md, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
