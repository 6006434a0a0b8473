"""--nan_policy: a non-finite loss (or gradient) is caught at the step it happens.

stop: NonFiniteLossError naming the step; nothing is applied or saved, earlier checkpoints intact.
skip: that update is dropped entirely (no optimizer step: weights, Adam moments and step count
unchanged; no scheduler step; the objective's buffers rolled back), logged with its step, and
training goes on."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from clusterns.cli.train import train_main
from clusterns.objectives.base import ObjectiveOutput
from clusterns.training.nan_guard import NonFiniteLossError


def inject(monkeypatch, objective_cls, at_forward: int, kind: str) -> None:
    """Make the objective's `at_forward`-th training forward return a bad loss.

    kind: nan / inf (the loss itself), or grad (a finite loss whose gradient is NaN: the derivative
    of sqrt at 0 is inf, times the zero inner derivative)."""
    original = objective_cls.forward
    calls = {"n": 0}

    def forward(self, views, batch, encoder):
        out = original(self, views, batch, encoder)
        if not self.training:
            return out
        calls["n"] += 1
        if calls["n"] != at_forward:
            return out
        if kind == "nan":
            loss = out.loss * float("nan")
        elif kind == "inf":
            loss = out.loss + float("inf")
        else:
            z = views.local
            loss = out.loss + 0.0 * torch.sqrt(((z - z.detach()) ** 2).sum())
        return ObjectiveOutput(loss=loss, logs=out.logs)

    monkeypatch.setattr(objective_cls, "forward", forward)


def argv(model, corpus, out, *extra):
    return [str(a) for a in (
        "--model_name_or_path", model, "--train_file", corpus, "--output_dir", out, "--per_device_train_batch_size", 8,
        "--max_steps", 4, "--use_cpu", "--logging_steps", 1, "--save_steps", 1, "--seed", 7, "--report_to", "none",
        "--disable_tqdm", "true", "--dataloader_num_workers", 0, *extra,
    )]


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def adam_steps(folder) -> set[float]:
    state = torch.load(folder / "optimizer.pt", weights_only=True)["state"]
    return {float(s["step"]) for s in state.values()}


def scheduler_epoch(folder) -> int:
    return torch.load(folder / "scheduler.pt", weights_only=True)["last_epoch"]


@pytest.mark.parametrize("kind", ["nan", "grad"])
def test_skip_drops_the_whole_update(tiny_bert, tiny_corpus, tmp_path, monkeypatch, kind):
    from clusterns.objectives.infonce import InfoNCEObjective

    inject(monkeypatch, InfoNCEObjective, 3, kind)
    out = tmp_path / "run"
    train_main(argv(tiny_bert, tiny_corpus, out, "--nan_policy", "skip"))
    c2, c3, c4 = (out / f"checkpoint-{s}" for s in (2, 3, 4))
    assert same(weights(c2), weights(c3))  # a zero-gradient Adam step would still move them (momentum)
    assert not same(weights(c3), weights(c4))  # training went on
    assert adam_steps(c2) == adam_steps(c3) == {2.0} and adam_steps(c4) == {3.0}
    assert scheduler_epoch(c2) == scheduler_epoch(c3) == 2 and scheduler_epoch(c4) == 3
    assert all(torch.isfinite(t).all() for t in weights(out).values())
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    events = [h for h in state["log_history"] if "nonfinite" in h]
    assert events == [{"step": 3, "nonfinite": "loss" if kind == "nan" else "gradient",
                       "nonfinite_loss": events[0]["nonfinite_loss"], "nan_policy": "skip"}]
    logged = {h["step"]: h for h in state["log_history"] if "loss" in h}
    assert logged[3]["nonfinite/skipped"] == 1 and all("nonfinite/skipped" not in logged[s] for s in (1, 2, 4))
    assert math.isnan(logged[3]["loss"]) and "sim/pos" not in logged[3]  # the dropped step's logs are not averaged in
    assert all(math.isfinite(logged[s]["loss"]) and math.isfinite(logged[s]["sim/pos"]) for s in (1, 2, 4))


@pytest.mark.parametrize("kind", ["inf", "grad"])
def test_stop_raises_at_the_step_and_saves_nothing(tiny_bert, tiny_corpus, tmp_path, monkeypatch, kind):
    from clusterns.objectives.infonce import InfoNCEObjective

    inject(monkeypatch, InfoNCEObjective, 3, kind)
    out = tmp_path / "run"
    what = "loss" if kind == "inf" else "gradient"
    with pytest.raises(NonFiniteLossError, match=rf"non-finite {what} at step 3 .*--nan_policy stop"):
        train_main(argv(tiny_bert, tiny_corpus, out))  # stop is the default
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["checkpoint-1", "checkpoint-2"]  # no tmp-* either
    assert not (out / "model.safetensors").exists()
    assert all(torch.isfinite(t).all() for t in weights(out / "checkpoint-2").values())


@pytest.mark.slow
def test_skip_rolls_back_the_clusterns_state(tiny_bert, tiny_corpus, tmp_path, monkeypatch):
    """The forward of the dropped step updated the centroids and the forward counter: both are restored."""
    from clusterns.objectives.clusterns.objective import ClusterNSObjective

    inject(monkeypatch, ClusterNSObjective, 3, "nan")
    out = tmp_path / "run"
    train_main(argv(tiny_bert, tiny_corpus, out, "--nan_policy", "skip", "--objective", "clusterns", "--kmeans", 4,
                    "--kmean_cosine", 1.0, "--kmeans_lr", 0.1))
    s2, s3, s4 = (load_file(str(out / f"checkpoint-{s}" / "objective.safetensors")) for s in (2, 3, 4))
    assert same(s2, s3) and int(s3["cluster.num_forwards"]) == 2 and bool(s3["cluster.started"])
    assert not torch.equal(s3["cluster.centroids"], s4["cluster.centroids"])


# ---- no broken model is ever written --------------------------------------------------------------------
def test_a_checkpoint_with_a_nan_weight_is_not_resumed(tiny_bert, tiny_corpus, tmp_path, capsys):
    """A NaN planted in checkpoint-2: the resume stops before training (it used to skip every step and save the
    NaN with exit 0), naming the file and the tensor; the CLI says it in one line, exit code 1."""
    from safetensors.torch import save_file

    from clusterns.cli.train import train_cli
    from clusterns.training.nan_guard import NonFiniteWeightsError

    out = tmp_path / "run"
    train_main(argv(tiny_bert, tiny_corpus, out, "--max_steps", 2))
    state = weights(out / "checkpoint-2")
    key = "encoder.layer.0.attention.self.query.weight"
    state[key][0, 0] = float("nan")
    save_file(state, str(out / "checkpoint-2" / "model.safetensors"), metadata={"format": "pt"})
    before = (out / "model.safetensors").read_bytes()
    resume = argv(tiny_bert, tiny_corpus, out, "--nan_policy", "skip", "--resume_from_checkpoint", out / "checkpoint-2")
    with pytest.raises(NonFiniteWeightsError, match=rf"checkpoint-2/model.safetensors: {key} is not finite"):
        train_main(resume)
    with pytest.raises(SystemExit) as exit_info:
        train_cli(resume)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: {out}/checkpoint-2/model.safetensors: {key} is not finite; this checkpoint cannot be resumed "
        "(resume from an earlier one, or start again)"]
    assert (out / "model.safetensors").read_bytes() == before and not (out / "checkpoint-3").exists()


def test_too_many_consecutive_skips_stop_the_run(tiny_bert, tiny_corpus, tmp_path, monkeypatch):
    """Every update from the 2nd on is non-finite: with --max_consecutive_skips 2 the third dropped update in a row
    stops the run: no checkpoint-4 and no final model; the checkpoints of the dropped steps hold step 1's weights."""
    from clusterns.objectives.infonce import InfoNCEObjective

    for forward in range(2, 9):
        inject(monkeypatch, InfoNCEObjective, forward, "nan")
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 4 .* 3 updates in a row .*--max_consecutive_skips 2"):
        train_main(argv(tiny_bert, tiny_corpus, out, "--nan_policy", "skip", "--max_consecutive_skips", 2, "--max_steps", 8))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert same(weights(out / "checkpoint-3"), weights(out / "checkpoint-1"))
    assert not (out / "model.safetensors").exists()


def test_non_finite_weights_are_never_saved(tiny_bert, tiny_corpus, tmp_path, monkeypatch):
    """Weights that became non-finite in a step whose loss and gradient looked finite: the next save refuses."""
    from clusterns.training.nan_guard import NonFiniteWeightsError
    from clusterns.training.trainer import ContrastiveTrainer

    original = ContrastiveTrainer._save_checkpoint

    def poison_then_save(self, model, trial):
        if self.state.global_step == 2:
            with torch.no_grad():
                self.contrastive_model.encoder.backbone.embeddings.word_embeddings.weight[3, 0] = float("inf")
        return original(self, model, trial)

    monkeypatch.setattr(ContrastiveTrainer, "_save_checkpoint", poison_then_save)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteWeightsError, match="encoder.backbone.embeddings.word_embeddings.weight is not finite"):
        train_main(argv(tiny_bert, tiny_corpus, out))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"] and not list(out.glob("tmp-*/checkpoint-2"))


def test_train_loss_is_the_mean_of_the_applied_updates(tiny_bert, tiny_corpus, tmp_path, monkeypatch):
    from clusterns.objectives.infonce import InfoNCEObjective

    inject(monkeypatch, InfoNCEObjective, 3, "nan")
    out = tmp_path / "run"
    results = train_main(argv(tiny_bert, tiny_corpus, out, "--nan_policy", "skip"))
    logged = [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    applied = [v for v in logged if math.isfinite(v)]
    assert len(applied) == 3 and results["skipped_steps"] == 1
    assert results["train_loss"] == pytest.approx(sum(applied) / 3, rel=1e-5)
    assert "train_loss = 0.0" not in (out / "train_results.txt").read_text()


# ---- --nan_check deferred: the verdict stays on the device until a logging step, a save or the end ---------------
def test_deferred_skip_drops_the_update_on_the_device(tiny_bert, tiny_corpus, tmp_path, monkeypatch):
    """The fused AdamW skips the bad update itself (found_inf): weights, moments and step count unchanged, as with
    every_step; the LR schedule advances (the one difference); the dropped step is logged when its window is."""
    from clusterns.objectives.infonce import InfoNCEObjective

    inject(monkeypatch, InfoNCEObjective, 3, "nan")
    out = tmp_path / "run"
    results = train_main(argv(tiny_bert, tiny_corpus, out, "--nan_policy", "skip", "--nan_check", "deferred", "--logging_steps", 2))
    c2, c3, c4 = (out / f"checkpoint-{s}" for s in (2, 3, 4))
    assert same(weights(c2), weights(c3)) and not same(weights(c3), weights(c4))
    assert adam_steps(c2) == adam_steps(c3) == {2.0} and adam_steps(c4) == {3.0}
    assert scheduler_epoch(c3) == 3 and scheduler_epoch(c4) == 4
    state = json.loads((out / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "nonfinite" in h] == [3]
    logged = {h["step"]: h for h in state["log_history"] if "loss" in h}
    assert logged[4]["nonfinite/skipped"] == 1 and math.isfinite(logged[4]["loss"]) and math.isfinite(logged[4]["sim/pos"])
    assert results["skipped_steps"] == 1 and math.isfinite(results["train_loss"])


def test_deferred_stop_raises_at_the_next_read_naming_the_step(tiny_bert, tiny_corpus, tmp_path, monkeypatch):
    from clusterns.objectives.infonce import InfoNCEObjective

    inject(monkeypatch, InfoNCEObjective, 2, "inf")
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2 .*--nan_check deferred: read at step 3"):
        train_main(argv(tiny_bert, tiny_corpus, out, "--nan_check", "deferred", "--logging_steps", 3, "--save_steps", 3))
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()


def test_deferred_needs_the_fused_optimizer(tiny_bert, tiny_corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train_main(argv(tiny_bert, tiny_corpus, tmp_path / "run", "--nan_check", "deferred", "--optim", "sgd"))
    assert info.value.code == 2 and "--nan_check deferred needs --optim adamw_torch_fused" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        train_main(argv(tiny_bert, tiny_corpus, tmp_path / "run", "--nan_check", "sometimes"))
    assert info.value.code == 2 and "--nan_check must be one of auto, every_step, deferred" in capsys.readouterr().err


def test_logging_nan_inf_filter_is_refused_not_ignored(tiny_bert, tiny_corpus, tmp_path, capsys):
    """HF's filter would see only finite losses here (the guard keeps dropped updates out of the logged loss): asking
    for it stops at start-up instead of doing nothing."""
    with pytest.raises(SystemExit) as info:
        train_main(argv(tiny_bert, tiny_corpus, tmp_path / "run", "--logging_nan_inf_filter", "true"))
    assert info.value.code == 2 and "--logging_nan_inf_filter would change nothing here" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_deferred_skip_puts_back_the_clusterns_state(tiny_bert, tiny_corpus, tmp_path, monkeypatch):
    """The dropped step's forward updated the centroids and the forward counter: put back on the device (a where)."""
    from clusterns.objectives.clusterns.objective import ClusterNSObjective

    inject(monkeypatch, ClusterNSObjective, 3, "nan")
    out = tmp_path / "run"
    train_main(argv(tiny_bert, tiny_corpus, out, "--nan_policy", "skip", "--nan_check", "deferred", "--objective", "clusterns",
                    "--kmeans", 4, "--kmean_cosine", 1.0, "--kmeans_lr", 0.1, "--logging_steps", 4))
    s2, s3, s4 = (load_file(str(out / f"checkpoint-{s}" / "objective.safetensors")) for s in (2, 3, 4))
    assert same(s2, s3) and int(s3["cluster.num_forwards"]) == 2 and bool(s3["cluster.started"])
    assert not torch.equal(s3["cluster.centroids"], s4["cluster.centroids"])
