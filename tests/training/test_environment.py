"""The environment record of a run (training/environment.py): versions, device, processes, the framework's commit
and dirty flag, the command line and the training file's hash, in training_args.json of the model and of every
checkpoint, and on the model card."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest

from clusterns.cli.train import train_main
from clusterns.training import environment


def test_file_hash_and_versions(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"one sentence\nanother one\n" * 1000)
    assert environment.file_sha256(corpus, block=7) == hashlib.sha256(corpus.read_bytes()).hexdigest()
    versions = environment.package_versions()
    import torch
    import transformers

    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
    assert versions["transformers"] == transformers.__version__ and versions["numpy"] and versions["datasets"]
    assert "torch_cuda" in versions and "cudnn" in versions


def test_git_record_of_a_checkout_and_of_none(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.txt").write_text("1\n")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert environment.git_record(repo) == {"commit": head, "dirty": False}
    (repo / "untracked.txt").write_text("x\n")  # untracked files do not make it dirty
    assert environment.git_record(repo)["dirty"] is False
    (repo / "a.txt").write_text("2\n")
    assert environment.git_record(repo) == {"commit": head, "dirty": True}
    assert environment.git_record(tmp_path / "elsewhere") is None


def test_processes_and_launcher_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    record = environment.environment_record(["--seed", "1"], None, "cpu", 4)
    assert record["processes"] == 4 and record["launcher"]["WORLD_SIZE"] == "4" and record["launcher"]["LOCAL_WORLD_SIZE"] == "2"
    assert record["argv"] == ["--seed", "1"] and record["command_line"].endswith("--seed 1")
    assert record["train_file_sha256"] is None and record["device"]["device"] == "cpu" and record["device"]["cpu"]


def test_a_run_records_its_environment_beside_the_model_and_on_the_card(tiny_bert, tiny_corpus, tmp_path):
    out = tmp_path / "run"
    argv = ["--model_name_or_path", str(tiny_bert), "--train_file", str(tiny_corpus), "--output_dir", str(out),
            "--per_device_train_batch_size", "8", "--max_steps", "2", "--save_steps", "1", "--use_cpu", "--do_train",
            "--report_to", "none", "--disable_tqdm", "true"]
    train_main(argv)
    expected_hash = hashlib.sha256(tiny_corpus.read_bytes()).hexdigest()
    for folder in (out, out / "checkpoint-1"):
        record = json.loads((folder / "training_args.json").read_text())["environment"]
        assert record["argv"] == argv and record["train_file"] == str(tiny_corpus)
        assert record["train_file_sha256"] == expected_hash and record["processes"] == 1
        assert record["device"]["device"] == "cpu" and record["packages"]["torch"]
        git = environment.git_record()
        assert record["framework_git"] == git  # this checkout's commit and dirty flag (None when installed)
    card = (out / "README.md").read_text()
    assert "## Environment of the training run" in card and expected_hash in card and "--max_steps 2" in card
    if git:
        assert git["commit"] in card
