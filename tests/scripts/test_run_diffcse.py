"""scripts/run_diffcse.sh and scripts/run_kodiffcse.sh: every configuration's dry run against the spec's tables
(diffcse.md §7 for DiffCSE, §13-§14 for KoDiffCSE), and the commands parse with train.py's parser."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DIFFCSE = REPO / "scripts" / "run_diffcse.sh"
KODIFFCSE = REPO / "scripts" / "run_kodiffcse.sh"
ENV_KEYS = ("MODEL", "GENERATOR", "TRAIN_FILE", "OUTPUT_DIR", "NUM_GPU", "EVAL_DATA_DIR", "TEST_DATA_DIR", "TASK_SET", "SEED", "KORSTS_DIR")

# ---- DiffCSE: spec §7 ("All recipes: --batchnorm, --mlp_only_train, pooler cls, temp 0.05, max_len 32") ----
DIFFCSE_BASE = {
    "model_name_or_path": "bert-base-uncased",
    "generator_name": "distilbert-base-uncased",
    "train_file": "data/wiki1m_for_simcse.txt",
    "objective": "diffcse",
    "lambda_weight": "0.005",
    "masking_ratio": "0.30",
    "batchnorm": True,
    "generator_replace": "argmax",
    "rtd_reduction": "all_positions",
    "masking_scheme": "bert",
    "num_train_epochs": "2",
    "per_device_train_batch_size": "64",
    "learning_rate": "7e-6",
    "max_seq_length": "32",
    "eval_strategy": "steps",
    "eval_steps": "125",
    "metric_for_best_model": "stsb_spearman",
    "load_best_model_at_end": True,
    "pooler_type": "cls",
    "mlp_only_train": True,
    "temp": "0.05",
    "seed": "42",
    "overwrite_output_dir": True,
    "logging_first_step": True,
    "do_train": True,
    "do_eval": True,
    "fp16": True,
}
ROBERTA = {"model_name_or_path": "roberta-base", "generator_name": "distilroberta-base"}
# config -> (train.py flags changed from the base, task set, values the spec marks unverified)
DIFFCSE_EXPECTED = {
    "bert-base": ({}, "sts", set()),
    "roberta-base": ({**ROBERTA, "learning_rate": "1e-5", "masking_ratio": "0.20"}, "sts",
                     {"learning_rate", "masking_ratio", "lambda_weight", "generator_name"}),
    "bert-base-transfer": ({"learning_rate": "2e-6", "masking_ratio": "0.15", "lambda_weight": "0.05"}, "transfer", set()),
    "roberta-base-transfer": ({**ROBERTA, "learning_rate": "3e-6", "masking_ratio": "0.15", "lambda_weight": "0.05"}, "transfer",
                              {"learning_rate", "masking_ratio", "lambda_weight", "generator_name"}),
    "bert-base-corrected": ({"generator_replace": "sample", "rtd_reduction": "exclude_padding", "no_generator_dropout": True}, "sts", set()),
}

# ---- KoDiffCSE: spec §13-§14 (run_diff.sh) ----
KODIFFCSE_BASE = {
    "model_name_or_path": "klue/roberta-base",
    "generator_name": "klue/roberta-small",
    "train_file": "data/korean_wiki_corpus.txt",
    "objective": "diffcse",
    "lambda_weight": "0.005",
    "masking_ratio": "0.15",
    "masking_scheme": "kodiffcse",
    "rtd_reduction": "sum_over_views",
    "generator_replace": "argmax",
    "cond_source": "hf_pooler",  # KoDiffCSE's contrastive vector: the checkpoint's pretrained pooler
    "num_train_epochs": "1",
    "per_device_train_batch_size": "256",
    "learning_rate": "5e-5",
    "warmup_steps": "0.05",  # transformers 5: a float < 1 is a ratio of the total steps
    "lr_scheduler_type": "linear",
    "weight_decay": "0.0",
    "max_grad_norm": "0",
    "max_seq_length": "64",
    "eval_strategy": "steps",
    "eval_steps": "125",
    "eval_korsts": True,
    "korsts_dir": "SentEval/data/downstream/KorSTS",
    "metric_for_best_model": "korsts_spearman",
    "load_best_model_at_end": True,
    "early_stop": "30",
    "pooler_type": "cls",
    "mlp_only_train": True,
    "temp": "0.05",
    "seed": "42",
    "overwrite_output_dir": True,
    "do_train": True,
    "do_eval": True,
    "fp16": True,
}
KODIFFCSE_EXPECTED = {
    "roberta-base": {},
    "bert-base": {"model_name_or_path": "klue/bert-base", "generator_name": "klue/bert-base", "per_device_train_batch_size": "128", "eval_steps": "250"},
}


def dry_run(script: Path, *args: str, **env: str):
    full_env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    full_env.update(env)
    proc = subprocess.run(["bash", str(script), *args, "--dry_run"], capture_output=True, text=True, env=full_env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    train_at = next(i for i, l in enumerate(lines) if l.endswith("train.py"))
    eval_at = lines.index("python evaluation.py")
    resolved, unverified = {}, set()
    for line in lines[:train_at]:
        key, value = line.split("=", 1)
        if value.endswith("[unverified]"):
            unverified.add(key)
            value = value[: -len("[unverified]")].rstrip()
        resolved[key] = value

    def flags(block):
        out = {}
        for line in block:
            parts = shlex.split(line)
            assert parts[0].startswith("--"), line
            out[parts[0][2:]] = parts[1] if len(parts) > 1 else True
        return out

    return resolved, unverified, flags(lines[train_at + 1 : eval_at]), flags(lines[eval_at + 1 :]), lines[train_at].split()


def parse(train: dict):
    from clusterns.training.run import parse_args

    argv = []
    for key, value in train.items():
        argv += [f"--{key}"] + ([] if value is True else [value])
    return parse_args(argv)


@pytest.mark.parametrize("config", sorted(DIFFCSE_EXPECTED))
def test_diffcse_dry_run_matches_the_published_table(config):
    changes, task_set, unverified_expected = DIFFCSE_EXPECTED[config]
    resolved, unverified, train, evaluation, launch = dry_run(DIFFCSE, config)
    assert train == {**DIFFCSE_BASE, **changes, "output_dir": f"result/diffcse-{config}"}
    assert resolved["config"] == config and resolved["global_batch_size"] == "64"
    assert unverified == unverified_expected
    assert ("unverified" in resolved["status"]) is bool(unverified_expected)
    for key in ("learning_rate", "lambda_weight", "masking_ratio", "generator_name"):
        assert resolved[key] == train[key], key
    assert launch == ["python", "train.py"]
    assert evaluation == {"model_name_or_path": f"result/diffcse-{config}", "pooler": "cls_before_pooler", "task_set": task_set, "mode": "test",
                          "output_json": f"result/diffcse-{config}/eval_test.json"}


@pytest.mark.parametrize("config", sorted(DIFFCSE_EXPECTED))
def test_diffcse_command_parses(config):
    from clusterns.objectives.diffcse.objective import DiffCSEArguments
    from clusterns.modeling.projectors import resolve_projector
    from clusterns.objectives.diffcse import DiffCSEObjective

    _, _, train, _, _ = dry_run(DIFFCSE, config)
    model_args, data_args, by_class, training_args = parse(train)
    d = by_class[DiffCSEArguments]
    assert model_args.objective == "diffcse" and model_args.pooler_type == "cls" and model_args.mlp_only_train
    assert model_args.temp == 0.05 and data_args.max_seq_length == 32 and not data_args.pad_to_max_length
    assert d.batchnorm and resolve_projector(model_args.projector, model_args.pooler_type, *(DiffCSEObjective.required_projector(d) or (None,))) == "bn_mlp"
    assert d.lambda_weight == float(train["lambda_weight"]) and d.masking_ratio == float(train["masking_ratio"])
    assert d.generator_name == train["generator_name"] and not d.before_mlp
    assert d.generator_dropout is (config != "bert-base-corrected")
    assert training_args.learning_rate == float(train["learning_rate"]) and training_args.num_train_epochs == 2
    assert training_args.per_device_train_batch_size == 64 and training_args.eval_steps == 125
    assert training_args.warmup_steps == 0 and training_args.max_grad_norm == 1.0
    assert training_args.weight_decay == 0.0 and training_args.seed == 42 and training_args.fp16
    assert training_args.metric_for_best_model == "stsb_spearman" and training_args.load_best_model_at_end


def test_diffcse_default_is_bert_base_and_overrides():
    assert dry_run(DIFFCSE)[2] == dry_run(DIFFCSE, "bert-base")[2]
    resolved, _, train, evaluation, launch = dry_run(
        DIFFCSE, "roberta-base", "--max_steps", "10", MODEL="/m/r", GENERATOR="/m/g", TRAIN_FILE="/d/w.txt",
        OUTPUT_DIR="/o/x", NUM_GPU="4", EVAL_DATA_DIR="/d/down", TEST_DATA_DIR="/d/SentEval", TASK_SET="full", SEED="7",
    )
    assert launch == ["torchrun", "--nproc_per_node", "4", "train.py"]
    assert (resolved["global_batch_size"], resolved["per_device_train_batch_size"]) == ("64", "16")
    assert train["per_device_train_batch_size"] == "16" and train["max_steps"] == "10"
    assert (train["model_name_or_path"], train["generator_name"], train["train_file"], train["output_dir"]) == ("/m/r", "/m/g", "/d/w.txt", "/o/x")
    assert train["eval_data_dir"] == "/d/down" and train["seed"] == "7"
    assert evaluation["model_name_or_path"] == "/o/x" and evaluation["data_dir"] == "/d/SentEval" and evaluation["task_set"] == "full"
    _, _, cpu, _, _ = dry_run(DIFFCSE, NUM_GPU="0")
    assert cpu["use_cpu"] is True and "fp16" not in cpu


@pytest.mark.parametrize("script", [DIFFCSE, KODIFFCSE])
def test_bad_configuration_and_indivisible_gpu_count(script):
    proc = subprocess.run(["bash", str(script), "bert-huge", "--dry_run"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "unknown configuration" in proc.stderr
    env = {**os.environ, "NUM_GPU": "3"}
    proc = subprocess.run(["bash", str(script), "--dry_run"], capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 2 and "not divisible" in proc.stderr


@pytest.mark.parametrize("config", sorted(KODIFFCSE_EXPECTED))
def test_kodiffcse_dry_run_matches_the_published_script(config):
    resolved, _, train, evaluation, launch = dry_run(KODIFFCSE, config)
    assert train == {**KODIFFCSE_BASE, **KODIFFCSE_EXPECTED[config], "output_dir": f"result/kodiffcse-{config}"}
    assert resolved["global_batch_size"] == train["per_device_train_batch_size"]
    assert launch == ["python", "train.py"]
    assert evaluation == {
        "model_name_or_path": f"result/kodiffcse-{config}", "pooler": "cls_before_pooler", "task_set": "na", "tasks": "KorSTS",
        "korsts": True, "korsts_dir": "SentEval/data/downstream/KorSTS", "korsts_per_batch": True, "max_seq_length": "64", "mode": "test",
        "output_json": f"result/kodiffcse-{config}/eval_test.json",
    }


@pytest.mark.parametrize("config", sorted(KODIFFCSE_EXPECTED))
def test_kodiffcse_command_parses(config):
    from clusterns.objectives.diffcse.objective import DiffCSEArguments
    from clusterns.modeling.projectors import resolve_projector
    from clusterns.objectives.diffcse import DiffCSEObjective

    _, _, train, _, _ = dry_run(KODIFFCSE, config)
    model_args, data_args, by_class, training_args = parse(train)
    d = by_class[DiffCSEArguments]
    assert d.masking_scheme == "kodiffcse" and d.rtd_reduction == "sum_over_views" and d.generator_replace == "argmax"
    assert d.generator_dropout and not d.batchnorm and d.lambda_weight == 0.005 and d.masking_ratio == 0.15
    assert resolve_projector(model_args.projector, model_args.pooler_type, *(DiffCSEObjective.required_projector(d) or (None,))) == "hf_pooler"
    assert d.cond_source == "hf_pooler" and not training_args.eval_english_sts
    assert data_args.max_seq_length == 64 and data_args.korsts_dir == "SentEval/data/downstream/KorSTS"
    # transformers 5 reads a fractional --warmup_steps as a ratio; on 4.x train.py renames it --warmup_ratio
    warmup = training_args.warmup_ratio if getattr(training_args, "warmup_ratio", 0) else training_args.warmup_steps
    assert training_args.learning_rate == 5e-5 and warmup == 0.05 and training_args.num_train_epochs == 1
    assert training_args.max_grad_norm == 0 and training_args.weight_decay == 0.0 and training_args.eval_korsts
    assert training_args.early_stop == 30 and training_args.metric_for_best_model == "korsts_spearman"


def test_kodiffcse_env_overrides():
    resolved, _, train, evaluation, launch = dry_run(
        KODIFFCSE, NUM_GPU="2", KORSTS_DIR="/d/korsts", TRAIN_FILE="/d/ko.txt", MODEL="/m/enc", GENERATOR="/m/gen", OUTPUT_DIR="/o/k"
    )
    assert launch == ["torchrun", "--nproc_per_node", "2", "train.py"]
    assert train["per_device_train_batch_size"] == "128" and resolved["global_batch_size"] == "256"
    assert train["korsts_dir"] == evaluation["korsts_dir"] == "/d/korsts"
    assert (train["model_name_or_path"], train["generator_name"], train["train_file"]) == ("/m/enc", "/m/gen", "/d/ko.txt")
    assert evaluation["model_name_or_path"] == "/o/k"
