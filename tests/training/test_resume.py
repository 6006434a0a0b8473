"""Exact resume: N steps straight == N/2 steps, a kill, then a new process resuming with
`--resume_from_checkpoint auto` to N: the same loss at every step, the same evaluations and
best-metric bookkeeping, and bit-identical final weights, optimizer and objective state
(dropout on, fixed seed, CPU; the resume crosses an epoch boundary mid-epoch)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from clusterns.training.checkpoints import latest_checkpoint, resolve_resume_checkpoint
from clusterns.cli.train import train_main
from clusterns.training.trainer import ContrastiveTrainer


class Killed(BaseException):
    """Stands for SIGKILL in the in-process first half (nothing is cleaned up or saved after it)."""


def kill_after_checkpoint(monkeypatch, step: int) -> None:
    original = ContrastiveTrainer._save_checkpoint

    def save_then_die(self, model, trial):
        original(self, model, trial)
        if self.state.global_step >= step:
            raise Killed(f"killed after checkpoint-{self.state.global_step}")

    monkeypatch.setattr(ContrastiveTrainer, "_save_checkpoint", save_then_die)


def scripted_dev_scores(monkeypatch, scores: dict[int, float]) -> None:
    """The dev evaluation returns scores[global_step] as stsb_spearman (best-model and early-stopping decisions)."""
    def scripted_evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        metrics = {"eval_stsb_spearman": scores[self.state.global_step], "epoch": self.state.epoch or 0.0}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    monkeypatch.setattr(ContrastiveTrainer, "evaluate", scripted_evaluate)


def common_argv(model, corpus, *extra) -> list[str]:
    return [str(a) for a in (
        "--model_name_or_path", model, "--train_file", corpus, "--per_device_train_batch_size", 8, "--max_steps", 8,
        "--use_cpu", "--logging_steps", 1, "--save_strategy", "steps", "--save_steps", 2, "--seed", 42,
        "--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", 0, *extra,
    )]


def resume_in_new_process(argv: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *argv], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


def history(out: Path) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_optimizer(file_a: Path, file_b: Path) -> None:
    a, b = torch.load(file_a, weights_only=True), torch.load(file_b, weights_only=True)
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        for name, value in a["state"][index].items():
            assert torch.equal(value, b["state"][index][name]), (index, name)


def run_straight_and_resumed(tmp_path, monkeypatch, argv):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_main(argv + ["--output_dir", str(straight)])
    with monkeypatch.context() as patch:
        kill_after_checkpoint(patch, 4)
        with pytest.raises(Killed):
            train_main(argv + ["--output_dir", str(resumed)])
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (resumed / "model.safetensors").exists()  # killed: no final save
    assert latest_checkpoint(str(resumed)) == str(resumed / "checkpoint-4")
    resume_in_new_process(argv + ["--output_dir", str(resumed), "--resume_from_checkpoint", "auto"])
    return straight, resumed


def test_infonce_resume_is_exact(tiny_bert, small_corpus, tiny_sts_dir, tmp_path, monkeypatch):
    argv = common_argv(
        tiny_bert, small_corpus, "--objective", "infonce", "--pooler_type", "cls", "--mlp_only_train",
        "--eval_strategy", "steps", "--eval_steps", 2, "--metric_for_best_model", "stsb_spearman",
        "--load_best_model_at_end", "--early_stop", 50, "--eval_data_dir", tiny_sts_dir,
    )
    straight, resumed = run_straight_and_resumed(tmp_path, monkeypatch, argv)

    def losses(out):
        return [(h["step"], h["loss"], h["sim/pos"], h["sim/neg"], h["learning_rate"], h["grad_norm"]) for h in history(out) if "loss" in h]

    def evals(out):
        return [(h["step"], h["eval_stsb_spearman"], h["eval_sickr_spearman"]) for h in history(out) if "eval_stsb_spearman" in h]

    assert [s for s, *_ in losses(straight)] == list(range(1, 9))
    assert losses(resumed) == losses(straight)  # every step, exactly (dropout masks and data order included)
    assert evals(resumed) == evals(straight) and len(evals(straight)) == 4
    for name in ("checkpoint-8", "."):
        assert_same_tensors(load_file(str(straight / name / "model.safetensors")), load_file(str(resumed / name / "model.safetensors")))
    assert_same_optimizer(straight / "checkpoint-8" / "optimizer.pt", resumed / "checkpoint-8" / "optimizer.pt")
    # best-metric bookkeeping, the early-stopping counter and the recorded best model
    a, b = (json.loads((out / "trainer_state.json").read_text()) for out in (straight, resumed))
    assert (a["best_metric"], a["best_global_step"]) == (b["best_metric"], b["best_global_step"])
    assert Path(a["best_model_checkpoint"]).name == Path(b["best_model_checkpoint"]).name
    counter = "EarlyStoppingCallback"
    assert a["stateful_callbacks"][counter]["attributes"] == b["stateful_callbacks"][counter]["attributes"]
    best_a, best_b = (json.loads((out / "best_metric.json").read_text()) for out in (straight, resumed))
    assert best_a["best_metric"] == best_b["best_metric"] == a["best_metric"]
    assert best_a["best_global_step"] == best_b["best_global_step"] == a["best_global_step"]


@pytest.mark.parametrize("start_step", [3, 6], ids=["clustering-before-checkpoint", "clustering-starts-after-resume"])
def test_clusterns_resume_is_exact(tiny_bert, small_corpus, tmp_path, monkeypatch, start_step):
    """Centroids, the started flag and the forward counter come back from objective.safetensors; the
    greedy chain's first index (Python `random`) from rng_state.pth when clustering starts after the resume."""
    argv = common_argv(
        tiny_bert, small_corpus, "--objective", "clusterns", "--kmeans", 4, "--bml_weight", 0.1, "--kmeans_lr", 0.1,
        "--cluster_start", "fixed_step", "--cluster_start_step", start_step, "--pooler_type", "cls", "--mlp_only_train",
    )
    straight, resumed = run_straight_and_resumed(tmp_path, monkeypatch, argv)
    keys = ("loss", "cluster/active", "cluster/start_step", "bml/loss", "sim/pos", "sim/hardneg", "grad_norm")

    def logged(out):
        return [(h["step"], *(h[k] for k in keys)) for h in history(out) if "loss" in h]

    assert logged(resumed) == logged(straight)
    assert [h[2] for h in logged(straight)] == [0.0] * start_step + [1.0] * (8 - start_step)
    for name in ("checkpoint-8", "."):
        assert_same_tensors(load_file(str(straight / name / "model.safetensors")), load_file(str(resumed / name / "model.safetensors")))
        assert_same_tensors(load_file(str(straight / name / "objective.safetensors")), load_file(str(resumed / name / "objective.safetensors")))
    assert_same_optimizer(straight / "checkpoint-8" / "optimizer.pt", resumed / "checkpoint-8" / "optimizer.pt")


def test_resume_auto_without_checkpoint_starts_fresh(tmp_path):
    assert resolve_resume_checkpoint("auto", str(tmp_path / "new-run")) is None
    assert resolve_resume_checkpoint(None, str(tmp_path)) is None


def test_resume_path_must_be_a_complete_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-9"), str(tmp_path))
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"missing trainer_state.json, config.json, clusterns_config.json, model.safetensors .*safetensors only"):
        resolve_resume_checkpoint(str(folder), str(tmp_path))


def test_early_stopping_patience_survives_resume(tiny_bert, small_corpus, tiny_sts_dir, tmp_path, monkeypatch):
    """Scripted dev scores: best at step 2, then worse. Patience 2 stops a straight run at step 6; resumed
    from checkpoint-4 (patience counter 1) it must stop at 6 too, not restart counting at 0 (-> 8)."""
    scripted_dev_scores(monkeypatch, {2: 0.9, 4: 0.1, 6: 0.2, 8: 0.3, 10: 0.4, 12: 0.5})
    argv = common_argv(tiny_bert, small_corpus, "--eval_strategy", "steps", "--eval_steps", 2, "--metric_for_best_model",
                       "stsb_spearman", "--load_best_model_at_end", "--early_stop", 2, "--eval_data_dir", tiny_sts_dir)
    argv[argv.index("--max_steps") + 1] = "12"
    resumed = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        kill_after_checkpoint(patch, 4)
        with pytest.raises(Killed):
            train_main(argv + ["--output_dir", str(resumed)])
    saved = json.loads((resumed / "checkpoint-4" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"]["early_stopping_patience_counter"] == 1
    train_main(argv + ["--output_dir", str(resumed), "--resume_from_checkpoint", "auto"])
    state = json.loads((resumed / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and state["best_global_step"] == 2  # as a straight run: 0.9, then 0.1, 0.2 -> stop
