#!/usr/bin/env python
"""Training curves of a run as PNGs, from trainer_state.json's log_history.

    python scripts/plot_training.py RUN_DIR [--output_dir RUN_DIR/plots] [--smooth 1]

Writes (only those with data):
  loss.png        training loss (and the learning rate) over steps
  dev.png         dev metrics over steps: STS-B / SICK-R dev Spearman x100 (best step marked),
                  KorSTS dev, alignment / uniformity, transfer dev accuracies
  objective.png   the objective's logged statistics over steps, one panel per group
                  (cluster/ sizes, start, false-negative pairs; sim/ pos, neg, hard negatives;
                  bml/, rtd/ accuracy and loss, mix/ ...)
RUN_DIR is a train.py output folder (or a checkpoint-N folder); without a trainer_state.json at
its root the latest checkpoint-N/trainer_state.json is used. Needs matplotlib (Agg backend).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

SKIP_TRAIN_KEYS = {"loss", "learning_rate", "grad_norm", "epoch", "step", "total_flos", "train_runtime",
                   "train_samples_per_second", "train_steps_per_second", "train_loss"}
DEV_SPEARMAN = [("eval_stsb_spearman", "STS-B dev"), ("eval_sickr_spearman", "SICK-R dev"), ("eval_avg_sts", "avg"),
                ("eval_korsts_spearman", "KorSTS dev")]
SKIP_EVAL_KEYS = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch", "step"}


def find_state(run_dir: str) -> Path:
    root = Path(run_dir)
    if root.is_file() and root.name.endswith(".json"):
        return root
    if (root / "trainer_state.json").is_file():
        return root / "trainer_state.json"
    checkpoints = sorted((p for p in root.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
                         key=lambda p: int(p.name.rsplit("-", 1)[-1]) if p.name.rsplit("-", 1)[-1].isdigit() else -1)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir!r} has no trainer_state.json (nor checkpoint-*/trainer_state.json)")
    return checkpoints[-1] / "trainer_state.json"


def series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for h in history:
        value = h.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "step" in h and math.isfinite(value):
            xs.append(int(h["step"]))
            ys.append(float(value))
    return xs, ys


def smooth(ys: list[float], window: int) -> list[float]:
    if window <= 1 or len(ys) < 2:
        return ys
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


def split_history(history: list[dict]) -> tuple[list[dict], list[dict]]:
    train = [h for h in history if "loss" in h and "step" in h]
    evals = [h for h in history if any(k.startswith("eval_") for k in h) and "step" in h]
    return train, evals


def objective_groups(train: list[dict]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for h in train:
        for key, value in h.items():
            if key in SKIP_TRAIN_KEYS or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            group = key.split("/", 1)[0] if "/" in key else "other"
            if key not in groups[group]:
                groups[group].append(key)
    return dict(groups)


def _integer_steps(fig) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _grid(n: int):
    cols = 1 if n == 1 else 2 if n <= 4 else 3
    return math.ceil(n / cols), cols


def plot_loss(plt, train: list[dict], out: Path, window: int, title: str) -> Path | None:
    steps, loss = series(train, "loss")
    if not steps:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, color="tab:blue", alpha=0.35 if window > 1 else 1.0, label="loss")
    if window > 1:
        ax.plot(steps, smooth(loss, window), color="tab:blue", label=f"loss (mean of {window})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    lr_steps, lr = series(train, "learning_rate")
    if lr_steps:
        ax2 = ax.twinx()
        ax2.plot(lr_steps, lr, color="tab:gray", linestyle="--", linewidth=1, label="learning rate")
        ax2.set_ylabel("learning rate", color="tab:gray")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    lines = [line for a in fig.axes for line in a.get_lines()]
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize=8)
    ax.set_title(f"{title}: training loss")
    fig.tight_layout()
    _integer_steps(fig)
    path = out / "loss.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_dev(plt, evals: list[dict], out: Path, title: str, best_step: int | None) -> Path | None:
    panels = []
    spearman = [(k, label) for k, label in DEV_SPEARMAN if series(evals, k)[0]]
    if spearman:
        panels.append(("Spearman x100", [(k, label, 100.0) for k, label in spearman]))
    align = [(k, k[len("eval_"):], 1.0) for k in ("eval_alignment", "eval_uniformity") if series(evals, k)[0]]
    if align:
        panels.append(("alignment / uniformity", align))
    known = {k for k, _ in DEV_SPEARMAN} | {"eval_alignment", "eval_uniformity"} | SKIP_EVAL_KEYS
    others = sorted({k for h in evals for k in h if k.startswith("eval_") and k not in known and series(evals, k)[0]})
    if others:
        panels.append(("dev accuracy / other", [(k, k[len("eval_"):], 1.0) for k in others]))
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 3.2 * len(panels)), squeeze=False)
    for ax, (ylabel, keys) in zip(axes[:, 0], panels):
        for key, label, scale in keys:
            xs, ys = series(evals, key)
            ax.plot(xs, [y * scale for y in ys], marker="o", markersize=3, label=label)
        if ylabel.startswith("Spearman") and best_step is not None:
            ax.axvline(best_step, color="tab:green", linestyle=":", label=f"best checkpoint (step {best_step})")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_title(f"{title}: dev evaluation")
    fig.tight_layout()
    _integer_steps(fig)
    path = out / "dev.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_objective(plt, train: list[dict], out: Path, window: int, title: str) -> Path | None:
    groups = objective_groups(train)
    if not groups:
        return None
    # the cluster sizes share one panel; counts (empty clusters, false-negative pairs) get their own
    panels: list[tuple[str, list[str]]] = []
    for group, keys in sorted(groups.items()):
        if group == "cluster":
            sizes = [k for k in keys if k.startswith("cluster/size_")]
            rest = [k for k in keys if k not in sizes]
            if sizes:
                panels.append(("cluster sizes (per batch)", sizes))
            for key in rest:
                panels.append((key, [key]))
        else:
            panels.append((keys[0] if len(keys) == 1 else group, keys))
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels):
        for key in keys:
            xs, ys = series(train, key)
            ax.plot(xs, smooth(ys, window), label=key)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{title}: objective statistics" + (f" (mean of {window} logs)" if window > 1 else ""))
    fig.tight_layout()
    _integer_steps(fig)
    path = out / "objective.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def best_step_of(state: dict) -> int | None:
    ckpt = state.get("best_model_checkpoint") or ""
    tail = ckpt.rstrip("/").rsplit("-", 1)[-1]
    if "checkpoint-" in ckpt and tail.isdigit():
        return int(tail)
    if state.get("best_global_step"):
        return int(state["best_global_step"])
    return None


def plot_run(run_dir: str, output_dir: str | None = None, window: int = 1, title: str | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    state_file = find_state(run_dir)
    state = json.loads(state_file.read_text())
    history = state.get("log_history", [])
    train, evals = split_history(history)
    if not train and not evals:
        raise ValueError(f"{state_file} has no logged steps: the run trained {state.get('global_step', 0)} step(s) and logs "
                         f"every {state.get('logging_steps')} (--logging_steps larger than the run); train longer or log more often")
    out = Path(output_dir) if output_dir else (Path(run_dir) if Path(run_dir).is_dir() else state_file.parent) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    title = title or Path(run_dir).resolve().name
    paths = [plot_loss(plt, train, out, window, title), plot_dev(plt, evals, out, title, best_step_of(state)),
             plot_objective(plt, train, out, window, title)]
    for name, path in zip(("loss.png", "dev.png", "objective.png"), paths):
        if path is None:
            print(f"no {name}: {why_missing(name, state, train, evals)}")
    return [p for p in paths if p is not None]


def why_missing(name: str, state: dict, train: list[dict], evals: list[dict]) -> str:
    """Why a plot could not be drawn, in terms of the flags the run was trained with."""
    steps, every = state.get("global_step", 0), state.get("logging_steps")
    if name in ("loss.png", "objective.png") and not train:
        return (f"no training step was logged: the run trained {steps} step(s) and logs every {every} "
                "(--logging_steps); train longer or log more often")
    if name == "objective.png":
        return "the objective logged no metrics of its own besides the loss"
    return ("no dev evaluation was logged: train with --eval_strategy steps --eval_steps N "
            f"(the run trained {steps} step(s))") if not evals else "the evaluations logged no Spearman or alignment"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="train.py output folder, a checkpoint-N folder, or a trainer_state.json")
    parser.add_argument("--output_dir", default=None, help="where the PNGs go (default: RUN_DIR/plots)")
    parser.add_argument("--smooth", type=int, default=1, help="running mean over this many logged points (default 1: raw)")
    parser.add_argument("--title", default=None, help="figure title prefix (default: the run folder name)")
    args = parser.parse_args(argv)
    if args.smooth < 1:
        parser.error("--smooth must be >= 1")
    try:
        paths = plot_run(args.run_dir, args.output_dir, args.smooth, args.title)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
