"""A tiny ClusterNS run with --report_to tensorboard: the objective's logs reach TensorBoard as scalars, the
run ends with a model card, and every checkpoint loads with sentence-transformers."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorboard")


@pytest.fixture(scope="module")
def run(tiny_bert, tiny_corpus, tiny_sts_dir, tmp_path_factory):
    from clusterns.cli.train import train_main

    out = tmp_path_factory.mktemp("tb-run") / "run"
    results = train_main([str(a) for a in [
        "--model_name_or_path", tiny_bert, "--train_file", tiny_corpus, "--objective", "clusterns", "--output_dir", out,
        "--kmeans", 4, "--kmean_cosine", 1.0, "--per_device_train_batch_size", 8, "--max_steps", 6, "--use_cpu",
        "--logging_steps", 2, "--eval_strategy", "steps", "--eval_steps", 3, "--save_steps", 3, "--pooler_type", "cls",
        "--mlp_only_train", "--eval_data_dir", tiny_sts_dir, "--dataloader_num_workers", 0, "--seed", 1,
        "--report_to", "tensorboard", "--do_train", "--do_eval",
    ]])
    return out, results


def scalars(out) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    files = sorted(out.glob("runs/*/events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {out}/runs"
    for file in files:
        acc = EventAccumulator(str(file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return found


def test_objective_logs_are_tensorboard_scalars(run):
    out, _ = run
    tags = scalars(out)
    for tag in ("train/loss", "train/learning_rate", "train/sim/pos", "train/sim/neg", "train/cluster/active",
                "train/cluster/size_max", "train/cluster/empty", "train/bml/loss", "eval/stsb_spearman", "eval/sickr_spearman"):
        assert tag in tags, (tag, sorted(tags))
    assert [step for step, _ in tags["train/sim/pos"]] == [2, 4, 6]
    # the same numbers as trainer_state.json's log history
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = {h["step"]: h["sim/pos"] for h in history if "sim/pos" in h}
    for step, value in tags["train/sim/pos"]:
        assert value == pytest.approx(logged[step], abs=1e-6)
    assert {step for step, _ in tags["eval/stsb_spearman"]} >= {3, 6}


def test_model_card_records_the_run(run):
    out, results = run
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers")
    for text in ("ClusterNS", "| kmeans | 4 |", "| per-device batch size | 8 |", "| max steps | 6 |",
                 "STS-B dev", "Final dev evaluation", "SentenceTransformer(", "--pooler cls_before_pooler"):
        assert text in card, text
    assert f"{results['eval_stsb_spearman'] * 100:.2f}" in card


def test_output_and_checkpoints_load_as_sentence_transformers(run):
    st = pytest.importorskip("sentence_transformers")
    from clusterns.modeling.encoder import SentenceEncoder

    out, _ = run
    sentences = ["a man is playing a guitar .", "two dogs run"]
    for folder in (out, out / "checkpoint-3", out / "checkpoint-6"):
        reference = SentenceEncoder.from_pretrained(folder).encode(sentences)
        emb = st.SentenceTransformer(str(folder), device="cpu").encode(sentences)
        cos = (emb * reference).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(reference, axis=1))
        assert cos.min() >= 0.9999, folder
