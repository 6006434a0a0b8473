"""ClusterNS end to end: train.py on a tiny BERT starts clustering at once; the logs and checkpoints show it;
--resume_from_checkpoint continues with the same centroids; bad flags fail at start-up."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file


def run_train(argv):
    from clusterns.cli.train import train_main

    return train_main([str(a) for a in argv])


def base_argv(tiny_bert, tiny_corpus, out, max_steps=6):
    return [
        "--model_name_or_path", tiny_bert, "--train_file", tiny_corpus, "--objective", "clusterns", "--output_dir", out,
        "--kmeans", 4, "--kmean_cosine", 1.0, "--bml_weight", 0.1, "--kmeans_lr", 0.1,
        "--per_device_train_batch_size", 8, "--max_steps", max_steps, "--use_cpu", "--logging_steps", 1,
        "--save_steps", 3, "--pooler_type", "cls", "--mlp_only_train", "--seed", 42, "--report_to", "none",
    ]


@pytest.fixture(scope="module")
def trained(tiny_bert, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("clusterns-run") / "run"
    run_train(base_argv(tiny_bert, tiny_corpus, out))
    return out


def test_logs_show_clustering_start(trained):
    state = json.loads((trained / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3, 4, 5, 6]
    keys = ("cluster/active", "cluster/start_step", "cluster/size_min", "cluster/size_median", "cluster/size_max",
            "cluster/empty", "cluster/fn_pairs", "bml/loss", "sim/pos", "sim/neg", "sim/hardneg")
    for h in logged:
        for key in keys:
            assert key in h and h[key] == h[key], key
    # Step 1 triggers (threshold 1.0) and is plain InfoNCE; clustering is active from step 2 on.
    assert logged[0]["cluster/active"] == 0.0 and logged[0]["cluster/start_step"] == 1.0
    assert logged[0]["bml/loss"] == 0.0
    for h in logged[1:]:
        assert h["cluster/active"] == 1.0 and h["cluster/start_step"] == 1.0
        assert 0 <= h["cluster/size_min"] <= h["cluster/size_median"] <= h["cluster/size_max"] <= 8
        assert 0 <= h["cluster/empty"] <= 3 and 0 <= h["cluster/fn_pairs"] <= 56
        assert h["bml/loss"] > 0 and h["sim/hardneg"] != 0


def test_checkpoints_hold_the_objective_state(trained):
    for step in (3, 6):
        state = load_file(str(trained / f"checkpoint-{step}" / "objective.safetensors"))
        assert set(state) == {"cluster.centroids", "cluster.started", "cluster.start_step", "cluster.num_forwards"}
        assert bool(state["cluster.started"]) and int(state["cluster.start_step"]) == 1
        assert int(state["cluster.num_forwards"]) == step
        assert state["cluster.centroids"].shape == (4, 32) and state["cluster.centroids"].dtype == torch.float32
        assert state["cluster.centroids"].abs().sum() > 0
    c3 = load_file(str(trained / "checkpoint-3" / "objective.safetensors"))["cluster.centroids"]
    c6 = load_file(str(trained / "checkpoint-6" / "objective.safetensors"))["cluster.centroids"]
    assert not torch.equal(c3, c6)  # updated every step
    # The final output folder loads with plain transformers (the centroids are beside it, not inside).
    from transformers import AutoModel

    AutoModel.from_pretrained(trained)
    assert (trained / "objective.safetensors").exists()


def test_resume_continues_with_the_same_centroids(trained, tiny_bert, tiny_corpus, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(trained / "checkpoint-3", resumed / "checkpoint-3")
    run_train(base_argv(tiny_bert, tiny_corpus, resumed) + ["--resume_from_checkpoint", resumed / "checkpoint-3"])
    a = load_file(str(trained / "checkpoint-6" / "objective.safetensors"))
    b = load_file(str(resumed / "checkpoint-6" / "objective.safetensors"))
    assert int(b["cluster.start_step"]) == 1 and int(b["cluster.num_forwards"]) == 6
    torch.testing.assert_close(b["cluster.centroids"], a["cluster.centroids"], rtol=1e-5, atol=1e-6)
    logged = [h for h in json.loads((resumed / "trainer_state.json").read_text())["log_history"] if "loss" in h and h["step"] > 3]
    assert logged and all(h["cluster/active"] == 1.0 and h["cluster/start_step"] == 1.0 for h in logged)


@pytest.mark.parametrize("flags, needle", [
    (["--kmeans", "0"], "--objective infonce"),
    (["--kmean_cosine", "1.5"], "--kmean_cosine"),
    (["--kmeans_optim", "sgd"], "--kmeans_optim"),
])
def test_bad_flags_fail_at_start_up(tiny_bert, tmp_path, capsys, flags, needle):
    with pytest.raises(SystemExit) as err:
        run_train(["--model_name_or_path", tiny_bert, "--objective", "clusterns", "--output_dir", tmp_path / "o", "--use_cpu", *flags])
    assert err.value.code == 2
    assert needle in capsys.readouterr().err
