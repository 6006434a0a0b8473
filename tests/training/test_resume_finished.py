"""A resume at or past the end trains nothing (issue: HF trained one extra step and wrote checkpoint-N+1).

Killed during the final save, then resumed with `--resume_from_checkpoint auto`: no extra step, and the final
folder's weights and objective state are bit-identical to the uninterrupted run's (infonce with --max_steps,
clusterns with --num_train_epochs, i.e. the step count HF derives from the epochs). A rerun of a finished run
with `auto` changes nothing either."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from clusterns.cli.train import train_main
from clusterns.training.trainer import ContrastiveTrainer
from test_resume import Killed, assert_same_tensors, common_argv, scripted_dev_scores

CASES = {
    "infonce": ["--objective", "infonce"],
    # 24 sentences, batch 8: 3 steps an epoch, 2 epochs = 6 steps (no --max_steps: the count comes from the epochs)
    "clusterns": ["--objective", "clusterns", "--kmeans", "4", "--kmean_cosine", "1.0", "--bml_weight", "0.1",
                  "--max_steps", "-1", "--num_train_epochs", "2"],
}


def kill_during_final_save(monkeypatch) -> None:
    original = ContrastiveTrainer._save

    def die_in_final_save(self, output_dir=None, state_dict=None):
        if not self._saving_checkpoint:  # the save after train(), not a checkpoint
            raise Killed("killed during the final save")
        return original(self, output_dir, state_dict)

    monkeypatch.setattr(ContrastiveTrainer, "_save", die_in_final_save)


def final_state(out: Path) -> tuple[dict, dict]:
    return load_file(str(out / "model.safetensors")), load_file(str(out / "objective.safetensors")) if (out / "objective.safetensors").exists() else {}


def steps(out: Path) -> list[int]:
    return [h["step"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]


@pytest.mark.parametrize("name", list(CASES))
def test_kill_during_final_save_then_resume_trains_nothing(name, tiny_bert, small_corpus, tmp_path, monkeypatch):
    argv = common_argv(tiny_bert, small_corpus, *CASES[name])
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train_main(argv + ["--output_dir", str(straight)])
    last = max(int(p.name.split("-")[1]) for p in straight.glob("checkpoint-*"))
    with monkeypatch.context() as patch:
        kill_during_final_save(patch)
        with pytest.raises(Killed):
            train_main(argv + ["--output_dir", str(killed)])
    assert not (killed / "model.safetensors").exists() and (killed / f"checkpoint-{last}").is_dir()
    train_main(argv + ["--output_dir", str(killed), "--resume_from_checkpoint", "auto"])
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == sorted(p.name for p in straight.glob("checkpoint-*"))
    assert steps(killed) == steps(straight) == list(range(1, last + 1))  # no step after the last
    for a, b in zip(final_state(straight), final_state(killed)):
        assert_same_tensors(a, b)
    assert (straight / "model.safetensors").read_bytes() == (killed / "model.safetensors").read_bytes()
    results = (killed / "train_results.txt").read_text()
    assert "nothing_trained = 1.0" in results and "train_loss" in results


def test_rerun_of_a_finished_run_with_auto_changes_nothing(tiny_bert, small_corpus, tmp_path):
    argv = common_argv(tiny_bert, small_corpus, *CASES["infonce"]) + ["--output_dir", str(tmp_path / "run")]
    train_main(argv)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    train_main(argv + ["--resume_from_checkpoint", "auto"])
    assert not (tmp_path / "run" / "checkpoint-9").exists()
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_planned_steps_is_hfs_count(tiny_bert, small_corpus, tmp_path):
    """The step count the finish test compares against equals the one HF trains (epochs, accumulation, a last
    partial batch)."""
    from clusterns.training.run import build_run

    for extra in (["--num_train_epochs", "2"], ["--num_train_epochs", "1.5", "--gradient_accumulation_steps", "2"],
                  ["--num_train_epochs", "1", "--per_device_train_batch_size", "5"]):
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        argv = common_argv(tiny_bert, small_corpus)
        del argv[argv.index("--max_steps"):argv.index("--max_steps") + 2]
        run = build_run(argv + ["--output_dir", str(out), "--save_strategy", "no", *extra])
        planned = run.trainer.planned_steps()
        run.trainer.train()
        assert run.trainer.state.global_step == run.trainer.state.max_steps == planned, extra


def best_model_argv(tiny_bert, small_corpus, tiny_sts_dir, out: Path) -> list[str]:
    """SimCSE's convention (the quick start's too): --load_best_model_at_end saves only the best checkpoint
    (--save_strategy best), so a run whose last evaluation is not its best ends with no checkpoint of its last step."""
    argv = common_argv(tiny_bert, small_corpus, "--eval_strategy", "steps", "--eval_steps", 2, "--metric_for_best_model",
                       "stsb_spearman", "--load_best_model_at_end", "--eval_data_dir", tiny_sts_dir, "--output_dir", out)
    del argv[argv.index("--save_strategy"):argv.index("--save_steps") + 2]
    return argv


def test_rerun_of_a_finished_best_model_run_trains_nothing(tiny_bert, small_corpus, tiny_sts_dir, tmp_path, monkeypatch, caplog):
    """Was: `auto` resumed from the best checkpoint (step 4 of 8), trained steps 5..8 again and rewrote the final
    folder. Now it finishes from the final state in output_dir: no step, the same bytes, the same trainer state."""
    scripted_dev_scores(monkeypatch, {2: 0.5, 4: 0.9, 6: 0.2, 8: 0.1})
    out = tmp_path / "run"
    argv = best_model_argv(tiny_bert, small_corpus, tiny_sts_dir, out)
    train_main(argv)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    weights, state = (out / "model.safetensors").read_bytes(), json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and state["best_global_step"] == 4
    trained_steps = []
    original = ContrastiveTrainer.training_step
    monkeypatch.setattr(ContrastiveTrainer, "training_step",
                        lambda self, *a, **k: trained_steps.append(self.state.global_step) or original(self, *a, **k))
    with caplog.at_level("INFO"):
        train_main(argv + ["--resume_from_checkpoint", "auto"])
    assert trained_steps == []
    assert f"resuming from the final state of the run in {out} (step 8)" in caplog.text
    assert (out / "model.safetensors").read_bytes() == weights  # the best model (step 4), as before
    again = json.loads((out / "trainer_state.json").read_text())
    assert again["global_step"] == 8 and again["best_global_step"] == 4 and again["log_history"] == state["log_history"]
    assert "nothing_trained = 1.0" in (out / "train_results.txt").read_text()


def test_more_steps_for_a_finished_best_model_run_continue_from_its_checkpoint(tiny_bert, small_corpus, tiny_sts_dir,
                                                                                tmp_path, monkeypatch, caplog):
    """The final folder has no optimizer state: a finished run given more steps continues from its latest
    checkpoint (with a warning), never from the final weights with a fresh Adam and schedule."""
    scripted_dev_scores(monkeypatch, {2: 0.5, 4: 0.9, 6: 0.2, 8: 0.1, 10: 0.3, 12: 0.4})
    out = tmp_path / "run"
    argv = best_model_argv(tiny_bert, small_corpus, tiny_sts_dir, out)
    train_main(argv)
    argv[argv.index("--max_steps") + 1] = "12"
    with caplog.at_level("INFO"):
        train_main(argv + ["--resume_from_checkpoint", "auto"])
    assert f"holds no optimizer state: continuing from {out / 'checkpoint-4'}" in caplog.text
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 12 and steps(out) == list(range(1, 13))


def test_resume_from_a_folder_without_optimizer_state_is_refused(tiny_bert, small_corpus, tmp_path, capsys):
    """An explicit folder that cannot continue the training exactly (a final model of another run, a
    --save_only_model checkpoint): one line naming the missing files and what to do, exit code 2."""
    argv = common_argv(tiny_bert, small_corpus, "--objective", "infonce")
    first = tmp_path / "first"
    train_main(argv + ["--output_dir", str(first), "--max_steps", "4"])
    for name in ("optimizer.pt", "scheduler.pt"):
        (first / "checkpoint-2" / name).unlink()
    with pytest.raises(SystemExit) as exit_info:
        train_main(argv + ["--output_dir", str(tmp_path / "second"), "--resume_from_checkpoint", str(first / "checkpoint-2")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {first / 'checkpoint-2'} is at step 2 of this run's 8 but holds no optimizer/scheduler state" in err
    assert f"--model_name_or_path {first / 'checkpoint-2'}" in err
    assert not (tmp_path / "second" / "model.safetensors").exists()
