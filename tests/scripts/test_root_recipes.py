"""The ClusterNS layout: `bash run_non_prompt.sh` / `bash run_prompt.sh` at the repository root are the
scripts/ recipes (one implementation): the same dry run for every configuration and environment override."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV_KEYS = ("MODEL", "TRAIN_FILE", "OUTPUT_DIR", "NUM_GPU", "EVAL_DATA_DIR", "TEST_DATA_DIR", "TASK_SET", "SEED", "MINI_BATCH_SIZE",
            "PROMPT_TEMPLATES", "TEST_CONVENTION", "CUDA_VISIBLE_DEVICES")
CASES = [
    ("run_non_prompt.sh", config, env)
    for config in ("bert-base", "bert-large", "roberta-base", "roberta-large")
    for env in ({}, {"NUM_GPU": "0", "MODEL": "m", "SEED": "7", "TASK_SET": "full", "EVAL_DATA_DIR": "/d"})
] + [
    ("run_prompt.sh", config, env)
    for config in ("prompt-bert-base", "prompt-bert-large", "prompt-roberta-base", "prompt-bert-base-script")
    for env in ({}, {"NUM_GPU": "2", "PROMPT_TEMPLATES": "run_prompt_sh", "TEST_CONVENTION": "consistent"})
]


def run(script: str, *args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    full_env.update(env)
    return subprocess.run(["bash", script, *args], capture_output=True, text=True, env=full_env, cwd=cwd)


@pytest.mark.parametrize("script, config, env", CASES)
def test_root_script_is_the_scripts_recipe(script, config, env):
    root = run(script, config, "--dry_run", "--max_steps", "3", **env)
    inner = run(f"scripts/{script}", config, "--dry_run", "--max_steps", "3", **env)
    assert root.returncode == 0, root.stderr
    assert root.stdout == inner.stdout and "--max_steps 3" in root.stdout
    for key, value in env.items():
        if key == "NUM_GPU":
            assert f"num_gpu={value}" in root.stdout


def test_bad_configuration_is_refused_from_the_root():
    proc = run("run_non_prompt.sh", "bert-huge", "--dry_run")
    assert proc.returncode == 2 and "unknown configuration 'bert-huge'" in proc.stderr


def test_a_real_run_outside_the_repository_root_is_refused(tmp_path):
    """The commands name train.py relative to the root (as the originals do): elsewhere one clear line, exit 2."""
    proc = run(str(REPO / "run_non_prompt.sh"), "bert-base", cwd=tmp_path, NUM_GPU="0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: run the recipe from the repository root (cd {REPO}); train.py is not in {tmp_path}"


def test_mini_batch_size_keeps_the_published_global_batch_on_one_device():
    """NUM_GPU=1 MINI_BATCH_SIZE=64: ClusterNS BERT-large's global batch 512 (published on 4 GPUs) on one device,
    the encoder run in chunks of 64 (train.py --mini_batch_size); a bad value is refused."""
    proc = run("run_non_prompt.sh", "bert-large", "--dry_run", NUM_GPU="1", MINI_BATCH_SIZE="64")
    assert proc.returncode == 0, proc.stderr
    assert "global_batch_size=512" in proc.stdout and "mini_batch_size=64" in proc.stdout
    assert "  --per_device_train_batch_size 512" in proc.stdout and "  --mini_batch_size 64" in proc.stdout
    assert "--mini_batch_size" not in run("run_non_prompt.sh", "bert-large", "--dry_run", NUM_GPU="1").stdout
    bad = run("run_non_prompt.sh", "bert-large", "--dry_run", MINI_BATCH_SIZE="0")
    assert bad.returncode == 2 and "MINI_BATCH_SIZE must be a positive integer, got '0'" in bad.stderr
