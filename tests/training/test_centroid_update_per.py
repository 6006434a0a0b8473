"""--centroid_update_per under gradient accumulation, through train.py: `micro_batch` (the original) moves the
centroids at every training forward; `optimizer_step` once per optimizer step, on the sentences of all its
micro-batches, before the last one's assignment (earlier micro-batches use the centroids as the step began).
Checked against momentum_update replayed by hand on the recorded embeddings."""
from __future__ import annotations

import pytest
import torch

from clusterns.objectives.clusterns import clustering as C
from clusterns.objectives.clusterns.objective import ClusterNSArguments, ClusterNSObjective

LR = 0.3


def run(tiny_bert, tiny_corpus, out, mode, accumulation, monkeypatch):
    """Train 2 optimizer steps of 2 x 4 sentences (or 1 x 8); record, per training forward, the gathered view-1
    embeddings and the centroids before and after."""
    from clusterns.cli.train import train_main

    forwards = []
    original = ClusterNSObjective.forward

    def recorded(self, views, batch, encoder):
        before = self.cluster.centroids.clone()
        out_ = original(self, views, batch, encoder)
        if self.training:
            forwards.append({"x": views.gathered[:, 0].detach().float().clone(), "before": before,
                             "after": self.cluster.centroids.clone(), "active": float(out_.logs["cluster/active"])})
        return out_

    monkeypatch.setattr(ClusterNSObjective, "forward", recorded)
    train_main([str(a) for a in [
        "--model_name_or_path", tiny_bert, "--train_file", tiny_corpus, "--objective", "clusterns", "--output_dir", out,
        "--kmeans", 2, "--kmean_cosine", 1.0, "--kmeans_lr", LR, "--centroid_update_per", mode,
        "--per_device_train_batch_size", 8 // accumulation, "--gradient_accumulation_steps", accumulation,
        "--max_steps", 3, "--use_cpu", "--report_to", "none", "--dropout_prob", 0, "--pooler_type", "cls",
        "--seed", 42, "--save_strategy", "no",
    ]])
    monkeypatch.undo()  # the next run wraps the real forward again
    return forwards


def momentum(centroids, x):
    _, assignments = C.assign(x, centroids)
    return C.momentum_update(centroids, x, assignments, LR)


def test_micro_batch_moves_the_centroids_every_forward(tiny_bert, tiny_corpus, tmp_path, monkeypatch):
    forwards = run(tiny_bert, tiny_corpus, tmp_path / "run", "micro_batch", 2, monkeypatch)
    assert [f["active"] for f in forwards] == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # forward 1 initialises
    for f in forwards[1:]:
        torch.testing.assert_close(f["after"], momentum(f["before"], f["x"]))


def test_optimizer_step_moves_them_once_per_step_on_all_its_sentences(tiny_bert, tiny_corpus, tmp_path, monkeypatch):
    forwards = run(tiny_bert, tiny_corpus, tmp_path / "run", "optimizer_step", 2, monkeypatch)
    assert len(forwards) == 6 and [f["active"] for f in forwards] == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    # Step 1 = forwards 1 (the trigger, which initialises) and 2 (its only active micro-batch).
    torch.testing.assert_close(forwards[1]["after"], momentum(forwards[1]["before"], forwards[1]["x"]))
    for first, last in ((forwards[2], forwards[3]), (forwards[4], forwards[5])):  # steps 2 and 3
        torch.testing.assert_close(first["after"], first["before"], rtol=0, atol=0)  # not moved mid-step
        torch.testing.assert_close(last["before"], first["before"], rtol=0, atol=0)
        expected = momentum(first["before"], torch.cat([first["x"], last["x"]]))
        torch.testing.assert_close(last["after"], expected)
        # ... which is not what two micro-batch updates give
        assert not torch.allclose(last["after"], momentum(momentum(first["before"], first["x"]), last["x"]))


def test_without_accumulation_both_modes_are_identical(tiny_bert, tiny_corpus, tmp_path, monkeypatch):
    micro = run(tiny_bert, tiny_corpus, tmp_path / "a", "micro_batch", 1, monkeypatch)
    step = run(tiny_bert, tiny_corpus, tmp_path / "b", "optimizer_step", 1, monkeypatch)
    assert len(micro) == len(step) == 3
    for a, b in zip(micro, step):
        torch.testing.assert_close(a["after"], b["after"], rtol=0, atol=0)


def test_bad_value_names_the_flag():
    with pytest.raises(ValueError, match="--centroid_update_per"):
        ClusterNSArguments(centroid_update_per="epoch")
