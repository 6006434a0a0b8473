"""--mask_duplicates through train.py: on a corpus of one sentence repeated, every in-batch negative is a duplicate,
so with the flag the InfoNCE loss of every step is exactly 0 (only the positive is left in each softmax), without it
about log(B); it lowers the loss of MixCSE and ClusterNS, whose mixtures and centroids stay; it is recorded with the
run."""
from __future__ import annotations

import json
import math

import pytest

from clusterns.cli.train import train_main


def argv(model, corpus, out, *extra):
    return ["--model_name_or_path", str(model), "--train_file", str(corpus), "--output_dir", str(out), "--use_cpu",
            "--per_device_train_batch_size", "8", "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no",
            "--report_to", "none", "--disable_tqdm", "true", "--do_train", *extra]


def logged_losses(out) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


@pytest.fixture
def one_sentence_corpus(tmp_path):
    path = tmp_path / "same.txt"
    path.write_text("a man is playing a guitar .\n" * 32)
    return path


def test_all_duplicates_leave_only_the_positive(tiny_bert, one_sentence_corpus, tmp_path):
    masked = tmp_path / "masked"
    train_main(argv(tiny_bert, one_sentence_corpus, masked, "--objective", "infonce", "--mask_duplicates"))
    assert logged_losses(masked) == [0.0, 0.0]
    assert '"mask_duplicates": true' in (masked / "training_args.json").read_text()  # recorded with the run
    plain = tmp_path / "plain"
    train_main(argv(tiny_bert, one_sentence_corpus, plain, "--objective", "infonce"))
    # identical sentences under dropout: every column about as likely, loss close to log(8)
    assert all(abs(loss - math.log(8)) < 0.5 for loss in logged_losses(plain))


# ClusterNS once its clustering is on keeps its centroid hard negatives (not the batch's sentences): its loss is
# lower with the flag, not 0; MixCSE's mixtures stay too.
@pytest.mark.parametrize("objective, extra", [("mixcse", ["--lambdas", "0.2"]),
                                              ("clusterns", ["--kmeans", "4", "--kmean_cosine", "0.99"])])
def test_mask_duplicates_changes_the_loss_of_other_objectives(objective, extra, tiny_bert, one_sentence_corpus, tmp_path):
    masked, plain = tmp_path / "masked", tmp_path / "plain"
    common = ["--objective", objective, *extra, "--dropout_prob", "0", "--seed", "3"]
    train_main(argv(tiny_bert, one_sentence_corpus, masked, *common, "--mask_duplicates"))
    train_main(argv(tiny_bert, one_sentence_corpus, plain, *common))
    a, b = logged_losses(masked), logged_losses(plain)
    assert len(a) == len(b) == 2 and all(x < y - 0.1 for x, y in zip(a, b))
