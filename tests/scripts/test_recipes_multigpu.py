"""Every recipe script (scripts/run_*.sh; the root run_*.sh only exec them, tests/scripts/test_root_recipes.py), every configuration, under
NUM_GPU = 0, 1, 2, 4, 8: NUM_GPU > 1 launches `torchrun --nproc_per_node $NUM_GPU train.py`, otherwise
`python train.py`; the per-device batch times the number of processes (times gradient accumulation) is the
published global batch, which the dry-run prints as global_batch_size= and which does not depend on NUM_GPU;
a NUM_GPU that does not divide the global batch is refused; NUM_GPU=0 trains on the CPU without fp16/bf16.

The configurations are read from each script's `CONFIGS=(a b c)` line (the names recipe_parse_args accepts), so
a new script or configuration is covered without touching this test."""
from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from recipes import REPO, flag

SCRIPTS = sorted(REPO.glob("scripts/run_*.sh"))
CONFIG_LIST = re.compile(r"^CONFIGS=\(([^)]*)\)$", re.M)
GPU_COUNTS = (0, 1, 2, 4, 8)
# Variables a developer's shell may export that would change what the scripts print.
SCRIPT_ENV = ("NUM_GPU", "MODEL", "TRAIN_FILE", "OUTPUT_DIR", "GENERATOR", "EVAL_DATA_DIR", "TEST_DATA_DIR", "SEED", "TASK_SET",
              "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "MAX_RESTARTS", "SEEDS", "MINI_BATCH_SIZE")


def configs(script) -> list[str]:
    match = CONFIG_LIST.search(script.read_text())
    assert match, f"{script.name}: no `CONFIGS=(a b c)` line to read the configurations from"
    return match.group(1).split()


CASES = [(script, config) for script in SCRIPTS for config in configs(script)]


def run(script, config, num_gpu: int | None):
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    if num_gpu is not None:
        env["NUM_GPU"] = str(num_gpu)
    proc = subprocess.run(["bash", str(script), config, "--dry_run"], capture_output=True, text=True, env=env, timeout=60)
    config_lines, commands = {}, []
    for line in proc.stdout.splitlines():
        if line.startswith("  --"):
            commands[-1].extend(shlex.split(line.strip()))
        elif line.startswith(("python", "torchrun")):
            commands.append(shlex.split(line))
        elif "=" in line and not line.startswith(" "):
            key, _, value = line.partition("=")
            config_lines[key.strip()] = value.strip()
    return proc, config_lines, commands


def test_scripts_found():
    names = {s.name for s in SCRIPTS}
    assert {"run_simcse.sh", "run_non_prompt.sh", "run_mixcse.sh", "run_diffcse.sh"} <= names, names


@pytest.mark.parametrize("script,config", CASES, ids=[f"{s.name}:{c}" for s, c in CASES])
def test_launch_and_global_batch(script, config):
    proc, base, _ = run(script, config, 1)
    assert proc.returncode == 0, proc.stderr
    global_batch = int(base["global_batch_size"])
    for num_gpu in GPU_COUNTS:
        proc, printed, commands = run(script, config, num_gpu)
        processes = max(num_gpu, 1)
        if global_batch % processes:
            assert proc.returncode == 2 and "not divisible" in proc.stderr, (num_gpu, proc.stderr)
            continue
        assert proc.returncode == 0, (num_gpu, proc.stderr)
        train = next(c for c in commands if "train.py" in c)
        if num_gpu > 1:
            assert train[:4] == ["torchrun", "--nproc_per_node", str(num_gpu), "train.py"], train[:4]
        else:
            assert train[:2] == ["python", "train.py"], train[:2]
        assert int(printed["global_batch_size"]) == global_batch, "the global batch must not depend on NUM_GPU"
        assert int(printed["num_gpu"]) == num_gpu
        per_device = int(flag(train, "--per_device_train_batch_size"))
        assert per_device == int(printed["per_device_train_batch_size"])
        accumulation = int(flag(train, "--gradient_accumulation_steps") or 1)
        assert per_device * processes * accumulation == global_batch, (num_gpu, per_device, accumulation)
        if num_gpu == 0:
            assert flag(train, "--use_cpu") is True
            assert flag(train, "--fp16") is None and flag(train, "--bf16") is None
        else:
            assert flag(train, "--use_cpu") is None


@pytest.mark.parametrize("script,config", CASES, ids=[f"{s.name}:{c}" for s, c in CASES])
def test_default_gpu_count_is_consistent(script, config):
    """Without NUM_GPU the script uses its default (1, or the published count) and launches accordingly."""
    proc, printed, commands = run(script, config, None)
    assert proc.returncode == 0, proc.stderr
    num_gpu = int(printed["num_gpu"])
    train = next(c for c in commands if "train.py" in c)
    assert train[0] == ("torchrun" if num_gpu > 1 else "python")
    assert int(flag(train, "--per_device_train_batch_size")) * max(num_gpu, 1) * int(flag(train, "--gradient_accumulation_steps") or 1) \
        == int(printed["global_batch_size"])


@pytest.fixture
def fake_launchers(tmp_path):
    """`python` and `torchrun` stand-ins on PATH that record their argv and CUDA_VISIBLE_DEVICES."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "launch.log"
    for name in ("python", "torchrun"):
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\nprintf "%s\\n" "CVD=${{CUDA_VISIBLE_DEVICES-unset}} $(basename "$0") $*" >> "{log}"\n')
        exe.chmod(0o755)
    return bin_dir, log


@pytest.mark.parametrize("script,config", CASES, ids=[f"{s.name}:{c}" for s, c in CASES])
def test_real_launch_matches_dry_run_and_pins_one_gpu(script, config, fake_launchers):
    """The command the script runs is the one its dry-run prints; NUM_GPU=1 pins one GPU (train.py refuses several
    visible GPUs in one process), unless CUDA_VISIBLE_DEVICES already chooses; torchrun runs see every GPU."""
    bin_dir, log = fake_launchers
    for num_gpu, preset, expected in ((1, None, "0"), (1, "3", "3"), (2, None, "unset"), (0, None, "unset")):
        _, _, commands = run(script, config, num_gpu)
        train = next(c for c in commands if "train.py" in c)
        env = {k: v for k, v in os.environ.items() if k not in (*SCRIPT_ENV, "CUDA_VISIBLE_DEVICES")}
        env.update(NUM_GPU=str(num_gpu), PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
        if preset is not None:
            env["CUDA_VISIBLE_DEVICES"] = preset
        log.unlink(missing_ok=True)
        proc = subprocess.run(["bash", str(script), config], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        launched = log.read_text().splitlines()
        assert launched[0] == f"CVD={expected} " + " ".join(train), (num_gpu, preset)
        assert launched[1].startswith(f"CVD={expected} python evaluation.py")
