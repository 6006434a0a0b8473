"""scripts/run_prompt.sh: every configuration's dry run against the published table (clusterns.md §10-§11, §15),
the resolved flags parse with train.py, and (slow) the recipe runs end to end on a tiny RoBERTa."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from clusterns.training.run import parse_args
from clusterns.modeling.prompt import BERT_TEMPLATES, ROBERTA_TEMPLATES, PromptArguments
from conftest import data_mirror

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "run_prompt.sh"
ENV_KEYS = ("MODEL", "TRAIN_FILE", "OUTPUT_DIR", "NUM_GPU", "EVAL_DATA_DIR", "TEST_DATA_DIR", "TASK_SET", "SEED",
            "PROMPT_TEMPLATES", "TEST_CONVENTION")

# Shared flags of run_prompt.sh (the README table does not change them).
BASE = {
    "train_file": "data/wiki1m_for_simcse.txt",
    "objective": "clusterns",
    "num_train_epochs": "1",
    "gradient_accumulation_steps": "1",
    "max_seq_length": "32",
    "logging_steps": "25",  # the original's 500 gave 3 points for plot_training.py
    "eval_strategy": "steps",
    "eval_steps": "125",
    "metric_for_best_model": "stsb_spearman",
    "load_best_model_at_end": True,
    "early_stop": "3",
    "pooler_type": "mask",
    "mlp_only_train": True,
    "temp": "0.05",
    "mask_embedding_sentence": True,
    "mask_embedding_sentence_delta": True,
    "seed": "42",
    "overwrite_output_dir": True,
    "do_train": True,
    "do_eval": True,
    "fp16": True,
}
# README "Hyperparameters", prompt columns (batch a*b = per-device a x b GPUs; the global batch is kept).
TABLE = {
    "prompt-bert-base": dict(model="bert-base-uncased", batch=512, gpus=1, lr="5e-5", kmeans="96", kmeans_lr="5e-4",
                             kmean_cosine="0.4", hardneg=True, bml_weight="1e-2", bml_alpha="0", bml_beta="0.2",
                             templates=BERT_TEMPLATES),
    "prompt-bert-large": dict(model="bert-large-uncased", batch=256, gpus=4, lr="3e-5", kmeans="96", kmeans_lr="1e-4",
                              kmean_cosine="0.2", hardneg=True, bml_weight="5e-4", bml_alpha="0.25", bml_beta="0.3",
                              templates=BERT_TEMPLATES),
    "prompt-roberta-base": dict(model="roberta-base", batch=512, gpus=2, lr="5e-5", kmeans="128", kmeans_lr="1e-3",
                                kmean_cosine="0.4", hardneg=False, bml_weight="1e-2", bml_alpha="0.2", bml_beta="0.6",
                                templates=ROBERTA_TEMPLATES),
    # the shipped run_prompt.sh (spec §11): its own values and the RoBERTa templates on BERT
    "prompt-bert-base-script": dict(model="bert-base-uncased", batch=512, gpus=2, lr="5e-5", kmeans="128", kmeans_lr="1e-3",
                                    kmean_cosine="0.4", hardneg=True, bml_weight="1e-5", bml_alpha="0.1", bml_beta="0.3",
                                    templates=ROBERTA_TEMPLATES),
}


def dry_run(*args: str, **env: str):
    full_env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    full_env.update(env)
    proc = subprocess.run(["bash", str(SCRIPT), *args, "--dry_run"], capture_output=True, text=True, env=full_env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    train_at = next(i for i, l in enumerate(lines) if l.endswith("train.py"))
    eval_at = lines.index("python evaluation.py")
    resolved = dict(l.split("=", 1) for l in lines[:train_at])

    def flags(block):
        out = {}
        for line in block:
            parts = shlex.split(line)
            assert parts[0].startswith("--"), line
            out[parts[0][2:]] = parts[1] if len(parts) > 1 else True
        return out

    return resolved, flags(lines[train_at + 1 : eval_at]), flags(lines[eval_at + 1 :]), lines[train_at].split(), lines


def command_argv(lines: list[str]) -> list[str]:
    """The train.py argument vector, re-parsed from the printed lines."""
    train_at = next(i for i, l in enumerate(lines) if l.endswith("train.py"))
    eval_at = lines.index("python evaluation.py")
    return [tok for line in lines[train_at + 1 : eval_at] for tok in shlex.split(line)]


@pytest.mark.parametrize("config", sorted(TABLE))
def test_dry_run_matches_the_published_table(config):
    row = TABLE[config]
    resolved, train, evaluation, launch, _ = dry_run(config)
    expected = {
        **BASE,
        "model_name_or_path": row["model"],
        "output_dir": f"result/ClusterNS-{config}",
        "per_device_train_batch_size": str(row["batch"] // row["gpus"]),
        "learning_rate": row["lr"],
        "kmeans": row["kmeans"],
        "kmeans_lr": row["kmeans_lr"],
        "kmean_cosine": row["kmean_cosine"],
        "bml_weight": row["bml_weight"],
        "bml_alpha": row["bml_alpha"],
        "bml_beta": row["bml_beta"],
        "mask_embedding_sentence_template": row["templates"][0],
        "mask_embedding_sentence_different_template": row["templates"][1],
        ("enable_hardneg" if row["hardneg"] else "no_enable_hardneg"): True,
    }
    assert train == expected
    # NUM_GPU defaults to the published GPU count (the table's `a*b`), like run_non_prompt.sh.
    assert resolved["num_gpu"] == resolved["published_num_gpu"] == str(row["gpus"])
    assert launch == (["torchrun", "--nproc_per_node", str(row["gpus"]), "train.py"] if row["gpus"] > 1 else ["python", "train.py"])
    assert resolved["global_batch_size"] == str(row["batch"]) and resolved["config"] == config
    assert resolved["enable_hardneg"] == ("1" if row["hardneg"] else "0")
    assert evaluation == {"model_name_or_path": f"result/ClusterNS-{config}", "pooler": "mask",
                          "prompt_convention": "test", "task_set": "sts", "mode": "test",
                          "output_json": f"result/ClusterNS-{config}/eval_test.json"}


@pytest.mark.parametrize("config", sorted(TABLE))
def test_resolved_flags_parse_with_train_py(config):
    *_, lines = dry_run(config)
    model_args, data_args, by_class, training_args = parse_args(command_argv(lines))
    prompt = by_class[PromptArguments]
    assert prompt.mask_embedding_sentence and prompt.mask_embedding_sentence_delta
    assert prompt.mask_embedding_sentence_template == TABLE[config]["templates"][0]
    assert prompt.mask_embedding_sentence_different_template == TABLE[config]["templates"][1]
    clusterns_args = next(a for c, a in by_class.items() if c.__name__ == "ClusterNSArguments")
    assert clusterns_args.enable_hardneg is TABLE[config]["hardneg"]
    assert clusterns_args.kmeans == int(TABLE[config]["kmeans"])
    assert training_args.per_device_train_batch_size == TABLE[config]["batch"] // TABLE[config]["gpus"]
    assert training_args.early_stop == 3 and training_args.load_best_model_at_end
    assert prompt.prompt_test_add_period and not prompt.prompt_test_delta  # faithful final test by default


@pytest.mark.parametrize("num_gpu, per_device, launcher", [("2", "256", "torchrun"), ("4", "128", "torchrun"), ("0", "512", "python")])
def test_num_gpu_keeps_the_global_batch(num_gpu, per_device, launcher):
    resolved, train, _, launch, _ = dry_run("prompt-roberta-base", NUM_GPU=num_gpu)
    assert resolved["global_batch_size"] == "512" and train["per_device_train_batch_size"] == per_device
    assert launch[0] == launcher
    if launcher == "torchrun":
        assert launch[1:4] == ["--nproc_per_node", num_gpu, "train.py"]
    else:
        assert train.get("use_cpu") is True and "fp16" not in train


def test_switches_and_overrides():
    _, train, _, _, _ = dry_run("prompt-bert-base", PROMPT_TEMPLATES="run_prompt_sh")
    assert train["mask_embedding_sentence_template"] == ROBERTA_TEMPLATES[0]  # the shipped script's accident
    _, train, evaluation, _, lines = dry_run("prompt-bert-base", TEST_CONVENTION="consistent")
    assert train["prompt_test_delta"] is True and train["no_prompt_test_add_period"] is True
    prompt = parse_args(command_argv(lines))[2][PromptArguments]
    assert prompt.prompt_test_delta and not prompt.prompt_test_add_period
    assert evaluation["prompt_convention"] == "consistent"
    resolved, train, evaluation, _, _ = dry_run("prompt-bert-large", MODEL="m", TRAIN_FILE="t.txt", OUTPUT_DIR="o",
                                                EVAL_DATA_DIR="dev", TEST_DATA_DIR="test", TASK_SET="full", SEED="7")
    assert (train["model_name_or_path"], train["train_file"], train["output_dir"], train["eval_data_dir"], train["seed"]) == ("m", "t.txt", "o", "dev", "7")
    assert (evaluation["model_name_or_path"], evaluation["data_dir"], evaluation["task_set"]) == ("o", "test", "full")
    _, train, _, _, _ = dry_run("prompt-bert-base", "--max_steps", "10")
    assert train["max_steps"] == "10"


@pytest.mark.parametrize("args, env, message", [
    (["bert-base"], {}, "unknown configuration"),
    (["prompt-bert-base"], {"NUM_GPU": "3"}, "not divisible"),
    (["prompt-bert-base"], {"PROMPT_TEMPLATES": "bert"}, "PROMPT_TEMPLATES"),
    (["prompt-bert-base"], {"TEST_CONVENTION": "final"}, "TEST_CONVENTION"),
])
def test_bad_configuration_is_a_clear_error(args, env, message):
    full_env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    full_env.update(env)
    proc = subprocess.run(["bash", str(SCRIPT), *args, "--dry_run"], capture_output=True, text=True, env=full_env, cwd=REPO)
    assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.slow
def test_recipe_runs_end_to_end_on_tiny_roberta(tiny_roberta, tiny_corpus, tiny_sts_dir, tmp_path):
    mirror = data_mirror() / "senteval"
    if not (mirror / "STS" / "STSBenchmark").is_dir():
        pytest.skip(f"SentEval data mirror not found at {mirror}")
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env.update(MODEL=str(tiny_roberta), TRAIN_FILE=str(tiny_corpus), OUTPUT_DIR=str(out), NUM_GPU="0",
               EVAL_DATA_DIR=str(tiny_sts_dir), TEST_DATA_DIR=str(mirror))
    proc = subprocess.run(
        ["bash", str(SCRIPT), "prompt-roberta-base", "--max_steps", "4", "--per_device_train_batch_size", "8",
         "--eval_steps", "2", "--kmeans", "4", "--logging_steps", "2", "--report_to", "none", "--dataloader_num_workers", "0"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "STSBenchmark" in proc.stdout and "SICKRelatedness" in proc.stdout
    assert (out / "clusterns_config.json").exists()
