"""scripts/run_simcse.sh resolves SimCSE's published recipes (shared/specs/simcse.md §11)."""
from __future__ import annotations

import subprocess

import pytest

from recipes import REPO, dry_run, flag, train_argv

# config: (model, global batch, lr, epochs, mlp_only_train, test pooler, train file)
PUBLISHED = {
    "unsup-bert-base": ("bert-base-uncased", 64, "3e-5", "1", True, "cls_before_pooler", "data/wiki1m_for_simcse.txt"),
    "unsup-bert-large": ("bert-large-uncased", 64, "1e-5", "1", True, "cls_before_pooler", "data/wiki1m_for_simcse.txt"),
    "unsup-roberta-base": ("roberta-base", 512, "1e-5", "1", True, "cls_before_pooler", "data/wiki1m_for_simcse.txt"),
    "unsup-roberta-large": ("roberta-large", 512, "3e-5", "1", True, "cls_before_pooler", "data/wiki1m_for_simcse.txt"),
    "sup-bert-base": ("bert-base-uncased", 512, "5e-5", "3", False, "cls", "data/nli_for_simcse.csv"),
    "sup-bert-large": ("bert-large-uncased", 512, "1e-5", "3", False, "cls", "data/nli_for_simcse.csv"),
    "sup-roberta-base": ("roberta-base", 512, "5e-5", "3", False, "cls", "data/nli_for_simcse.csv"),
    "sup-roberta-large": ("roberta-large", 512, "1e-5", "3", False, "cls", "data/nli_for_simcse.csv"),
}


@pytest.mark.parametrize("config", sorted(PUBLISHED))
@pytest.mark.parametrize("num_gpu", ["1", "4"])
def test_published_hyperparameters(config, num_gpu):
    model, batch, lr, epochs, mlp_only, test_pooler, train_file = PUBLISHED[config]
    resolved, (train, evaluate) = dry_run("scripts/run_simcse.sh", config, env={"NUM_GPU": num_gpu})
    assert resolved["global_batch_size"] == str(batch)
    assert train[0] == ("torchrun" if num_gpu == "4" else "python")
    assert flag(train, "--per_device_train_batch_size") == str(batch // int(num_gpu))
    assert flag(train, "--model_name_or_path") == model
    assert flag(train, "--train_file") == train_file
    assert flag(train, "--learning_rate") == lr
    assert flag(train, "--num_train_epochs") == epochs
    assert flag(train, "--max_seq_length") == "32"
    assert flag(train, "--temp") == "0.05"
    assert flag(train, "--pooler_type") == "cls"
    assert (flag(train, "--mlp_only_train") is True) == mlp_only
    assert flag(train, "--eval_steps") == "125"
    assert flag(train, "--metric_for_best_model") == "stsb_spearman"
    assert flag(train, "--load_best_model_at_end") is True
    assert flag(train, "--fp16") is True
    assert flag(evaluate, "--pooler") == test_pooler
    assert flag(evaluate, "--mode") == "test"


def test_resolved_command_parses_with_train_flags():
    from clusterns.training.run import parse_args

    _, (train, _) = dry_run("scripts/run_simcse.sh", "unsup-bert-base", env={"NUM_GPU": "0"})
    model_args, data_args, _, training_args = parse_args(train_argv(train) + ["--output_dir", "/tmp/unused"])
    assert model_args.mlp_only_train and model_args.pooler_type == "cls"
    assert training_args.eval_strategy == "steps" and training_args.learning_rate == 3e-5
    assert training_args.use_cpu


def test_unknown_config_is_refused():
    result = subprocess.run(["bash", str(REPO / "scripts/run_simcse.sh"), "unsup-xlnet"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown configuration" in result.stderr
