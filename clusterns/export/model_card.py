"""The model card (README.md in a model folder): base model, objective (description and citation from the
objective registry), hyper-parameters, data, the dev numbers and, when evaluation.py has written JSON into
the folder (`--output_json OUTPUT_DIR/eval_test.json`), the final STS / transfer / KorSTS tables.

`write_model_card(output_dir, run_config, metrics)` is called at the end of training (export/folder.py);
refresh it after evaluating with `clusterns-model-card OUT` (cli/model_card.py).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NamedTuple

from clusterns.export.results import (
    MISSING,
    default_label,
    find_eval_jsons,
    load_payload,
    markdown_table,
    results_markdown,
)
from clusterns.io import CONFIG_NAME, MODEL_CARD_NAME, TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from clusterns.modeling.encoder import EncoderConfig
from clusterns.objectives import get_objective_class, objective_names

logger = logging.getLogger(__name__)

CARD_NAME = MODEL_CARD_NAME

def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return MISSING
    return f"`{value}`" if isinstance(value, str) else str(value)

def _kv_table(rows: list[tuple[str, Any]]) -> str:
    return markdown_table(["", ""], [[k, _fmt(v)] for k, v in rows]).replace("|---|:---:|", "|---|---|")

def _hub_id(name: str | None) -> str | None:
    """A hub repo id for the card's base_model metadata (local paths are left out)."""
    if not name or os.path.isabs(name) or name.startswith(".") or name.count("/") > 1 or os.path.exists(name):
        return None
    return name

def _versions() -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("Python", platform.python_version())]
    for dist in ("clusterns", "torch", "transformers", "sentence-transformers", "tokenizers"):
        try:
            rows.append((dist, version(dist)))
        except PackageNotFoundError:
            continue
    return rows

# The in-training dev Spearman columns of the card, in this order, each shown when the run logged it.
DEV_COLUMNS = (("eval_stsb_spearman", "STS-B dev"), ("eval_sickr_spearman", "SICK-R dev"), ("eval_korsts_spearman", "KorSTS dev"))


def _dev_metrics(metrics: dict, state: dict | None) -> str:
    lines = []
    if state and state.get("best_metric") is not None:
        best = state.get("best_metric")
        ckpt = state.get("best_model_checkpoint")
        step = ckpt.rstrip("/").rsplit("-", 1)[-1] if ckpt and "checkpoint-" in ckpt else None
        lines.append(f"Best dev metric (selection): **{best * 100 if abs(best) <= 1 else best:.2f}**"
                     + (f" at step {step}" if step else ""))
    log = (state or {}).get("log_history", [])
    columns = [(key, title) for key, title in DEV_COLUMNS if any(key in h for h in log)]
    history = [h for h in log if any(key in h for key, _ in columns)]
    if history:
        rows = []
        for h in history:
            rows.append([str(h.get("step"))] + [f"{h[key] * 100:.2f}" if key in h else MISSING for key, _ in columns])
        if len(rows) > 12:  # keep the card short: first, every n-th, last
            stride = -(-len(rows) // 10)
            rows = rows[::stride] + ([rows[-1]] if (len(rows) - 1) % stride else [])
        lines.append("Dev Spearman x100 during training:\n\n" + markdown_table(["step", *(t for _, t in columns)], rows))
    final = {k: v for k, v in (metrics or {}).items() if k.startswith("eval_") and isinstance(v, (int, float))}
    if final:
        rows = [[k[len("eval_"):], f"{v * 100:.2f}" if ("spearman" in k or k.endswith("avg_sts")) else f"{v:.4g}"]
                for k, v in sorted(final.items()) if k not in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")]
        lines.append("Final dev evaluation (x100 for Spearman):\n\n" + markdown_table(["metric", "value"], rows))
    return "\n\n".join(lines) if lines else "No dev evaluation was run during training."

def _method(objective: str) -> "_Method":
    """The objective's description and citation from the registry (a name it does not know: the name)."""
    if objective in objective_names():
        cls = get_objective_class(objective)
        return _Method(cls.description or objective, cls.citation)
    return _Method(objective, "")

class _Method(NamedTuple):
    description: str
    citation: str

def render_model_card(output_dir: str, run_config: dict | None = None, metrics: dict | None = None,
                      eval_jsons: list[str] | None = None) -> str:
    output_dir = str(output_dir)
    run_config = run_config or _read_json(os.path.join(output_dir, TRAINING_ARGS_NAME)) or {}
    state = _read_json(os.path.join(output_dir, TRAINER_STATE_NAME))
    encoder_config = _read_json(os.path.join(output_dir, CONFIG_NAME)) or {}
    modules = _read_json(os.path.join(output_dir, "modules.json")) or []
    model_args = run_config.get("model", {})
    data_args = run_config.get("data", {})
    objective_args = run_config.get("objective_args", {})
    training = run_config.get("training", {})
    objective = model_args.get("objective") or encoder_config.get("objective") or "unknown"
    base = model_args.get("model_name_or_path") or encoder_config.get("base_model")
    custom = any(str(m.get("type", "")).startswith("clusterns.") for m in modules)

    pooler = encoder_config.get("pooler_type", "cls")
    projector = encoder_config.get("projector", "none")
    mlp_only_train = bool(encoder_config.get("mlp_only_train"))
    eval_pooler = EncoderConfig.from_dict(encoder_config).eval_pooler if encoder_config else pooler
    method = _method(objective)

    front = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:",
             "- sentence-transformers", "- sentence-similarity", "- feature-extraction", "- clusterns"]
    if objective != "clusterns":
        front.append(f"- {objective}")
    if _hub_id(base):
        front.append(f"base_model: {_hub_id(base)}")
    front.append("---")

    st_args = ", trust_remote_code=True" if custom else ""
    usage = [
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{output_dir}"{st_args})',
        'embeddings = model.encode(["A man is playing a guitar.", "Someone plays an instrument."])',
        "```",
    ]
    if custom:
        usage.append("\nThis encoder uses the `clusterns.st_modules.ClusternsEncoder` module (prompt pooler or BatchNorm "
                     "projector), so it needs `pip install` of this repository and `trust_remote_code=True` "
                     "(or `clusterns.export.st_module.load_sentence_transformer(path)`).")
    usage += [
        "",
        "```python",
        "from clusterns import SentenceEncoder",
        "",
        f'encoder = SentenceEncoder.from_pretrained("{output_dir}")',
        'embeddings = encoder.encode(["A man is playing a guitar."], batch_size=64)',
        "```",
        "",
        "Evaluate (SentEval STS, SimCSE's protocol):",
        "",
        "```bash",
        f"python evaluation.py --model_name_or_path {output_dir} --pooler {eval_pooler if eval_pooler != 'mask' else '<default>'} "
        f"--task_set sts --mode test --output_json {output_dir}/eval_test.json",
        f"python -m clusterns.cli.model_card {output_dir}   # adds the table to this card",
        "```",
    ]
    if eval_pooler == "mask":
        usage[-4] = (f"python evaluation.py --model_name_or_path {output_dir} --task_set sts --mode test "
                     f"--output_json {output_dir}/eval_test.json")

    model_rows = [
        ("base model", base), ("objective", f"{objective} — {method.description}"),
        *([("reference", method.citation)] if method.citation else []),
        ("pooler (training)", pooler), ("projector", projector), ("mlp_only_train", mlp_only_train),
        ("sentence vector at evaluation", eval_pooler), ("first_layer_index", encoder_config.get("first_layer_index")),
        ("sentence-transformers modules", " -> ".join(str(m.get("type", "?")).rsplit(".", 1)[-1] for m in modules) or MISSING),
    ]
    if encoder_config.get("prompt"):
        p = encoder_config["prompt"]
        model_rows += [("prompt template", p.get("template")), ("template 2", p.get("template2")),
                       ("template denoising (train)", p.get("delta")), ("test convention", "delta" if p.get("test_delta") else "raw mask state")]

    world = run_config.get("world_size")
    per_device = training.get("per_device_train_batch_size")
    accumulation = training.get("gradient_accumulation_steps", 1)
    hyper = [
        ("temperature (--temp)", model_args.get("temp")),
        ("learning rate", training.get("learning_rate")),
        ("per-device batch size", per_device),
        ("gradient accumulation", accumulation),
        ("processes (world size)", world),
    ]
    if world and per_device:
        hyper.append(("global batch size", int(world) * int(per_device) * int(accumulation or 1)))
    hyper += [
        ("epochs", training.get("num_train_epochs") if (training.get("max_steps") or -1) <= 0 else MISSING),
        ("max steps", training.get("max_steps") if (training.get("max_steps") or -1) > 0 else MISSING),
        ("epochs trained", round(float((state or {}).get("epoch") or 0), 4) if state else MISSING),
        ("steps trained", (state or {}).get("global_step")),
        ("warmup (ratio / steps)", f"{training.get('warmup_ratio', 0)} / {training.get('warmup_steps', 0)}"),
        ("weight decay", training.get("weight_decay")),
        ("lr scheduler", training.get("lr_scheduler_type")),
        ("precision", "bf16" if training.get("bf16") else "fp16" if training.get("fp16") else "fp32"),
        ("seed", training.get("seed")),
        ("dropout override", model_args.get("dropout_prob")),
        ("hard_negative_weight", model_args.get("hard_negative_weight")),
        ("evaluation / selection", f"{training.get('eval_strategy', 'no')} every {training.get('eval_steps')} steps, "
                                   f"best by {training.get('metric_for_best_model')}" if training.get("eval_strategy") not in (None, "no", "IntervalStrategy.NO") else "none"),
    ]
    if metrics and "train_loss" in metrics:
        hyper.append(("final training loss", metrics["train_loss"]))
    if metrics and "train_runtime" in metrics:
        hyper.append(("training time (s)", metrics["train_runtime"]))
    data_rows = [("training file", data_args.get("train_file")), ("sentence columns", data_args.get("sentence_columns")),
                 ("max_seq_length (training)", data_args.get("max_seq_length")), ("dev data", data_args.get("eval_data_dir"))]

    if eval_jsons is None:
        eval_jsons = find_eval_jsons(output_dir) if os.path.isdir(output_dir) else []
    if eval_jsons:
        entries = [(default_label(p, f), p) for f in eval_jsons for p in [load_payload(f)]]
        entries = [(f"{label} · {Path(f).stem}", p) for (label, p), f in zip(entries, eval_jsons)] if len(entries) > 1 else entries
        test_tables = results_markdown(entries, heading="####")
    else:
        test_tables = ("Not evaluated on the test sets yet: run the `evaluation.py` command above with `--output_json` "
                       "into this folder, then `python -m clusterns.cli.model_card " + output_dir + "`.")

    body = [
        "\n".join(front),
        "",
        f"# {method.description.split(' (')[0]} sentence encoder",
        "",
        f"A sentence encoder trained with the **{objective}** objective from `{base}` with "
        "clusterns (SimCSE-family training on one framework). It maps sentences to "
        "vectors compared by cosine similarity.",
        "",
        "## Usage",
        "",
        "\n".join(usage),
        "",
        "## Model",
        "",
        _kv_table(model_rows),
        "",
        "## Training",
        "",
        "### Data",
        "",
        _kv_table(data_rows),
        "",
        "### Hyper-parameters",
        "",
        _kv_table(hyper),
    ]
    if objective_args:
        body += ["", f"### Objective flags ({objective})", "", _kv_table(sorted(objective_args.items()))]
    body += ["", f"Every flag is recorded in `{TRAINING_ARGS_NAME}`.", "", "## Results", "", "### Dev (during training)", "",
             _dev_metrics(metrics or {}, state), "", "### Test (evaluation.py)", "", test_tables, "",
             "## Framework versions", "", _kv_table(_versions()), ""]
    environment = run_config.get("environment")
    if environment:
        body += ["## Environment of the training run", "", _kv_table(_environment_rows(environment)), ""]
    return "\n".join(body)


def _environment_rows(environment: dict) -> list[tuple[str, Any]]:
    """The card's rows of training_args.json's "environment" (training/environment.py)."""
    git = environment.get("framework_git")
    framework = f"{git['commit']}{' (with uncommitted changes)' if git.get('dirty') else ''}" if git else "not a git checkout"
    device = environment.get("device", {})
    packages = environment.get("packages", {})
    where = device.get("gpu") or device.get("cpu")
    rows: list[tuple[str, Any]] = [
        ("framework commit", framework),
        ("command line", environment.get("command_line", "")),
        ("device", f"{device.get('device', '?')} ({where})" if where else device.get("device", "?")),
        ("processes", environment.get("processes")),
        ("training file sha256", environment.get("train_file_sha256") or "-"),
    ]
    rows += [(name, value) for name, value in packages.items() if value is not None]
    return rows + [("recorded", environment.get("recorded_at"))]

def write_model_card(output_dir: str | os.PathLike, run_config: dict | None = None, metrics: dict | None = None,
                     eval_jsons: list[str] | None = None) -> str:
    """Write OUTPUT_DIR/README.md; returns its path. run_config: {"model", "data", "objective_args", "training",
    "world_size"} (default: read from training_args.json); metrics: train/eval metrics of the run."""
    path = os.path.join(str(output_dir), CARD_NAME)
    text = render_model_card(str(output_dir), run_config, metrics, eval_jsons)
    with open(path, "w") as f:
        f.write(text)
    return path
