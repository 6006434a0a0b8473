"""Atomic checkpoints, a full disk, and the best model under --save_total_limit.

A checkpoint is written into tmp-checkpoint-<step>/ and renamed to checkpoint-<step> when complete:
a process killed mid-save leaves no checkpoint-<step> folder, resume (`auto`) takes the previous
one, and the leftover is removed by the next save. A failed write (ENOSPC) raises a clear error
and leaves the previous checkpoints untouched."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.trainer_utils import get_last_checkpoint

from conftest import REPO
from clusterns.training import checkpoints as ckpt
from clusterns.cli.train import train_main
from clusterns.training.trainer import ContrastiveTrainer

# Scripted dev scores by global step (replaces SentEval in these tests).
SCORES = {2: 0.5, 4: 0.9, 6: 0.1, 8: 0.2}


def scripted_evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
    metrics = {"eval_stsb_spearman": SCORES[self.state.global_step], "epoch": self.state.epoch or 0.0}
    self.log(metrics)
    self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
    return metrics


def argv(model, corpus, out, sts_dir, *extra):
    return [str(a) for a in (
        "--model_name_or_path", model, "--train_file", corpus, "--output_dir", out, "--per_device_train_batch_size", 8,
        "--max_steps", 8, "--use_cpu", "--logging_steps", 2, "--save_strategy", "steps", "--save_steps", 2,
        "--eval_strategy", "steps", "--eval_steps", 2, "--metric_for_best_model", "stsb_spearman",
        "--load_best_model_at_end", "--eval_data_dir", sts_dir, "--seed", 1, "--report_to", "none",
        "--disable_tqdm", "true", "--dataloader_num_workers", 0, *extra,
    )]


def tree_digest(folder) -> dict[str, str]:
    return {
        os.path.relpath(os.path.join(root, name), folder): hashlib.sha256(open(os.path.join(root, name), "rb").read()).hexdigest()
        for root, _, files in os.walk(folder) for name in files
    }


def same_weights(a, b) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


DRIVER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r}); sys.path.insert(0, {root_tests!r})
    import torch
    import test_checkpoint_atomic as t
    from clusterns.training.trainer import ContrastiveTrainer
    ContrastiveTrainer.evaluate = t.scripted_evaluate
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt") and "checkpoint-4" in str(f):
            os._exit(137)  # SIGKILL-like: no exception handler, no cleanup
        return real_save(obj, f, *args, **kwargs)

    torch.save = dying_save
    from clusterns.cli.train import train_main
    train_main(sys.argv[1:])
""")


def test_killed_save_leaves_no_checkpoint_and_auto_resumes_from_the_previous(tiny_bert, tiny_corpus, tiny_sts_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(repo=str(REPO), tests=str(Path(__file__).resolve().parent),
                                     root_tests=str(Path(__file__).resolve().parents[1])))
    proc = subprocess.run([sys.executable, str(driver), *argv(tiny_bert, tiny_corpus, out, tiny_sts_dir)],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 137, proc.stderr[-3000:]
    # The model files of checkpoint-4 were written, the optimizer was not: only the staging folder has them.
    partial = out / "tmp-checkpoint-4" / "checkpoint-4"
    assert (partial / "model.safetensors").exists() and not (partial / "trainer_state.json").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert ckpt.is_complete_checkpoint(str(out / "checkpoint-2"))
    assert ckpt.latest_checkpoint(str(out)) == get_last_checkpoint(str(out)) == str(out / "checkpoint-2")
    state2 = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state2["best_model_checkpoint"] == str(out / "checkpoint-2")  # a committed folder, never a tmp- one

    monkeypatch.setattr(ContrastiveTrainer, "evaluate", scripted_evaluate)
    train_main(argv(tiny_bert, tiny_corpus, out, tiny_sts_dir, "--resume_from_checkpoint", "auto"))
    assert not list(out.glob("tmp-*"))  # the killed save's leftovers are gone
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "eval_stsb_spearman" in h] == [2, 4, 6, 8]
    assert state["best_global_step"] == 4 and state["best_model_checkpoint"] == str(out / "checkpoint-4")
    assert same_weights(out, out / "checkpoint-4")


def disk_errors():
    from safetensors import SafetensorError

    return {
        "oserror": lambda path: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)),
        # what safetensors' save_file and torch.save raise on a full disk (neither is an OSError)
        "safetensors": lambda path: SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'),
        "torch": lambda path: RuntimeError(
            "[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: PytorchStreamWriter failed writing file data/0: file write failed"),
    }


@pytest.mark.parametrize("writer, kind", [("model", "oserror"), ("optimizer", "oserror"), ("model", "safetensors"), ("optimizer", "torch")])
def test_disk_full_during_checkpoint(tiny_bert, tiny_corpus, tiny_sts_dir, tmp_path, monkeypatch, writer, kind):
    import clusterns.io

    monkeypatch.setattr(ContrastiveTrainer, "evaluate", scripted_evaluate)
    out = tmp_path / "run"
    before: dict = {}
    make_error = disk_errors()[kind]

    def full_disk(real):
        def save(obj, path, *args, **kwargs):
            if "checkpoint-4" in str(path):
                before.update(tree_digest(out / "checkpoint-2"))
                raise make_error(path)
            return real(obj, path, *args, **kwargs)

        return save

    if writer == "model":  # safetensors weights, written through clusterns.io.save_tensors
        monkeypatch.setattr(clusterns.io, "save_file", full_disk(clusterns.io.save_file))
    else:  # optimizer.pt, written by HF with torch.save
        monkeypatch.setattr(torch, "save", full_disk(torch.save))
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        train_main(argv(tiny_bert, tiny_corpus, out, tiny_sts_dir))
    message = str(err.value)
    full = kind != "torch"  # torch.save's message does not say why the write failed
    assert err.value.errno == (errno.ENOSPC if full else errno.EIO)
    for needle in ("could not write checkpoint-4", *(("No space left on device", "disk is full") if full else ("file write failed",)),
                   f"free in {out}", f"{out / 'checkpoint-2'}, is intact", "--resume_from_checkpoint auto"):
        assert needle in message, message
    assert before and tree_digest(out / "checkpoint-2") == before  # the previous checkpoint is untouched
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["checkpoint-2"]  # no partial checkpoint-4, no tmp-*
    assert not (out / "model.safetensors").exists()
    assert ckpt.latest_checkpoint(str(out)) == str(out / "checkpoint-2")


def test_best_model_survives_rotation_and_is_the_final_model(tiny_bert, tiny_corpus, tiny_sts_dir, tmp_path, monkeypatch):
    """save_total_limit 1: checkpoints 4, 6, 8 rotate; the best (step 4) is never deleted, is what
    output_dir holds at the end, and its metric is recorded in best_metric.json."""
    monkeypatch.setattr(ContrastiveTrainer, "evaluate", scripted_evaluate)
    deleted_best = []
    original = ContrastiveTrainer._rotate_keeping_best

    def rotate(self, run_dir):
        original(self, run_dir)
        if self.state.global_step >= 4 and not (out / "checkpoint-4").is_dir():
            deleted_best.append(self.state.global_step)

    monkeypatch.setattr(ContrastiveTrainer, "_rotate_keeping_best", rotate)
    out = tmp_path / "run"
    train_main(argv(tiny_bert, tiny_corpus, out, tiny_sts_dir, "--save_total_limit", 1))
    assert not deleted_best
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    assert same_weights(out, out / "checkpoint-4")
    best = json.loads((out / ckpt.BEST_METRIC_NAME).read_text())
    assert best["best_metric"] == 0.9 and best["best_global_step"] == 4 and best["global_step"] == 8
    assert best["metric_for_best_model"] == "stsb_spearman" and best["best_model_checkpoint"] == str(out / "checkpoint-4")
    assert not list(out.glob("tmp-*"))

    # The run folder is moved, then resumed from its best checkpoint: the recorded best path no longer
    # exists, the best is found again by its step, kept through rotation and restored at the end.
    moved = tmp_path / "moved"
    out.rename(moved)
    train_main(argv(tiny_bert, tiny_corpus, moved, tiny_sts_dir, "--save_total_limit", 1, "--resume_from_checkpoint", "auto"))
    assert sorted(p.name for p in moved.glob("checkpoint-*")) == ["checkpoint-4"]
    best = json.loads((moved / ckpt.BEST_METRIC_NAME).read_text())
    assert best["best_model_checkpoint"] == str(moved / "checkpoint-4") and best["best_metric"] == 0.9
    assert same_weights(moved, moved / "checkpoint-4")


def write_checkpoint(folder, complete=True):
    folder.mkdir(parents=True)
    names = ["config.json", "clusterns_config.json", "model.safetensors"] + (["trainer_state.json"] if complete else [])
    for name in names:
        (folder / name).write_text("{}")


def test_latest_complete_checkpoint_skips_incomplete_and_staging_folders(tmp_path, caplog):
    write_checkpoint(tmp_path / "checkpoint-2")
    write_checkpoint(tmp_path / "checkpoint-10", complete=False)  # e.g. written without staging, then killed
    write_checkpoint(tmp_path / "tmp-checkpoint-12" / "checkpoint-12")
    (tmp_path / "checkpoint-11.txt").write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        assert ckpt.latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert "checkpoint-10" in caplog.text and "trainer_state.json" in caplog.text
    assert ckpt.resolve_resume_checkpoint("auto", str(tmp_path)) == str(tmp_path / "checkpoint-2")
    ckpt.remove_stale_staging(str(tmp_path))
    assert not (tmp_path / "tmp-checkpoint-12").exists() and (tmp_path / "checkpoint-10").exists()


def test_commit_replaces_an_existing_folder_whole(tmp_path):
    final, staged = tmp_path / "checkpoint-3", tmp_path / "tmp-checkpoint-3" / "checkpoint-3"
    write_checkpoint(final)
    (final / "stale.txt").write_text("old")
    write_checkpoint(staged)
    (staged / "model.safetensors").write_text("new")
    ckpt.commit_folder(str(staged), str(final))
    assert (final / "model.safetensors").read_text() == "new" and not (final / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "tmp-checkpoint-3"]  # the empty root is the caller's


def test_disk_full_writing_the_results_files(tiny_bert, tiny_corpus, tiny_sts_dir, tmp_path, monkeypatch, capsys):
    """train_results.txt / trainer_state.json are written atomically: a full disk leaves no 0-byte file and no
    temporary, and the CLI reports it in one line (exit code 1)."""
    import clusterns.io
    from clusterns.cli.train import train_cli

    out = tmp_path / "run"
    real_open = open

    def full_disk_open(path, mode="r", *args, **kwargs):
        if "train_results.txt" in str(path) and "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(clusterns.io, "open", full_disk_open, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        train_cli([str(a) for a in ("--model_name_or_path", tiny_bert, "--train_file", tiny_corpus, "--output_dir", out,
                                    "--per_device_train_batch_size", 8, "--max_steps", 2, "--use_cpu", "--report_to", "none")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    line = next(l for l in err.splitlines() if l.startswith("error: "))
    assert "could not write train_results.txt: No space left on device (the disk is full)" in line and "free in" in line
    assert not (out / "train_results.txt").exists() and not list(out.glob("*.tmp"))
    assert (out / "model.safetensors").exists()  # the model itself was saved before
