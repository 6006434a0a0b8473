"""Recipes on several nodes: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, MAX_RESTARTS (env) give the torchrun
launch line of each node with the published global batch kept over NUM_GPU x NNODES processes; node 0 alone runs
the test; bad values are refused naming the variable; the SLURM example (scripts/slurm/train_multinode.sbatch)
prints each node's commands under fake `srun` / `scontrol` (a dry run: no cluster here)."""
from __future__ import annotations

import os
import subprocess

import pytest

from recipes import REPO, flag
from test_recipes_multigpu import CASES, SCRIPT_ENV, configs, run

SBATCH = REPO / "scripts" / "slurm" / "train_multinode.sbatch"


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV and not k.startswith("SLURM_")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def dry(script, config, **env):
    proc = subprocess.run(["bash", str(script), config, "--dry_run"], capture_output=True, text=True, env=clean_env(**env), timeout=60)
    return proc


def parse(stdout: str) -> tuple[dict, list[list[str]]]:
    import shlex

    printed, commands = {}, []
    for line in stdout.splitlines():
        if line.startswith("  --"):
            commands[-1].extend(shlex.split(line.strip()))
        elif line.startswith(("python", "torchrun")):
            commands.append(shlex.split(line))
        elif "=" in line and not line.startswith((" ", "#")):
            key, _, value = line.partition("=")
            printed[key.strip()] = value.strip()
    return printed, commands


@pytest.mark.parametrize("script,config", CASES, ids=[f"{s.name}:{c}" for s, c in CASES])
def test_two_nodes_keep_the_global_batch(script, config):
    _, base, _ = run(script, config, 1)
    global_batch = int(base["global_batch_size"])
    for node in (0, 1):
        proc = dry(script, config, NUM_GPU=2, NNODES=2, NODE_RANK=node, MASTER_ADDR="10.1.2.3", MASTER_PORT=29555)
        if global_batch % 4:
            assert proc.returncode == 2 and "NUM_GPU x NNODES = 2 x 2 processes" in proc.stderr
            return
        assert proc.returncode == 0, proc.stderr
        printed, commands = parse(proc.stdout)
        train = next(c for c in commands if "train.py" in c)
        assert train[:train.index("train.py")] == ["torchrun", "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "2",
                                                   "--master_addr", "10.1.2.3", "--master_port", "29555"]
        per_device, accumulation = int(flag(train, "--per_device_train_batch_size")), int(flag(train, "--gradient_accumulation_steps") or 1)
        assert per_device * 2 * 2 * accumulation == global_batch == int(printed["global_batch_size"])
        assert (printed["nnodes"], printed["node_rank"]) == ("2", str(node))
        tests = [c for c in commands if "evaluation.py" in c]
        assert len(tests) == (1 if node == 0 else 0), "only node 0 runs the test"


def test_max_restarts_launches_torchrun_even_for_one_process():
    script = REPO / "scripts" / "run_simcse.sh"
    _, commands = parse(dry(script, "unsup-bert-base", NUM_GPU=1, MAX_RESTARTS=2).stdout)
    train = next(c for c in commands if "train.py" in c)
    assert train[:train.index("train.py")] == ["torchrun", "--nproc_per_node", "1", "--max-restarts", "2"]
    assert flag(train, "--resume_from_checkpoint") is None  # a restart resumes by itself; a fresh launch does not


@pytest.mark.parametrize("env, message", [
    ({"NNODES": "2"}, "NNODES=2 needs MASTER_ADDR"),
    ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h"}, "NODE_RANK=2 must be below NNODES=2"),
    ({"NNODES": "0"}, "NNODES must be at least 1"),
    ({"NNODES": "two"}, "NNODES must be a non-negative integer"),
    ({"MAX_RESTARTS": "-1"}, "MAX_RESTARTS must be a non-negative integer"),
    ({"MASTER_PORT": "70000"}, "MASTER_PORT must be 1-65535"),
    ({"NNODES": "2", "MASTER_ADDR": "h", "SEEDS": "1 2"}, "unset SEEDS for NNODES > 1"),
])
def test_bad_multinode_settings_are_refused(env, message):
    proc = dry(REPO / "scripts" / "run_simcse.sh", "unsup-bert-base", NUM_GPU=1, **env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.fixture
def fake_slurm(tmp_path):
    """`scontrol show hostnames` printing two hosts and an `srun` that runs its command once per node (SLURM_NODEID)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\nprintf "gpu-node-a\\ngpu-node-b\\n"\n')
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do echo "srun option $1"; shift; done\n'
                                  'for n in $(seq 0 $((SLURM_JOB_NUM_NODES - 1))); do echo "=== node $n"; SLURM_NODEID=$n "$@" || exit $?; done\n')
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    return bin_dir


def test_slurm_example_dry_run_prints_each_nodes_torchrun(fake_slurm):
    script = REPO / "scripts" / "run_non_prompt.sh"
    config = configs(script)[0]
    env = clean_env(PATH=f"{fake_slurm}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_NUM_NODES=2, SLURM_JOB_NODELIST="gpu-node-[a-b]",
                    SLURM_GPUS_ON_NODE=4, DRY_RUN=1)
    proc = subprocess.run(["bash", str(SBATCH), "scripts/run_non_prompt.sh", config], cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "srun option --kill-on-bad-exit=1" in proc.stdout
    nodes = proc.stdout.split("=== node ")[1:]
    assert len(nodes) == 2
    for rank, text in enumerate(nodes):
        printed, commands = parse(text)
        train = next(c for c in commands if "train.py" in c)
        assert train[:train.index("train.py")] == ["torchrun", "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "4",
                                                   "--master_addr", "gpu-node-a", "--master_port", "29500", "--max-restarts", "3"]
        global_batch = int(printed["global_batch_size"])
        assert int(flag(train, "--per_device_train_batch_size")) * 8 * int(flag(train, "--gradient_accumulation_steps") or 1) == global_batch
    # The #SBATCH header is a valid sbatch file: one task per node.
    header = [line for line in SBATCH.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --ntasks-per-node=1" in header and any(line.startswith("#SBATCH --nodes=") for line in header)


def test_slurm_example_outside_an_allocation_says_so():
    proc = subprocess.run(["bash", str(SBATCH), "scripts/run_simcse.sh", "unsup-bert-base"], cwd=REPO, capture_output=True, text=True,
                          env=clean_env(), timeout=60)
    assert proc.returncode != 0 and "not inside a SLURM allocation" in proc.stderr
    proc = subprocess.run(["bash", str(SBATCH), "scripts/nope.sh"], cwd=REPO, capture_output=True, text=True, env=clean_env(), timeout=60)
    assert proc.returncode == 2 and "no recipe script scripts/nope.sh" in proc.stderr
