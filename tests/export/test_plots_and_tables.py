"""scripts/plot_training.py, scripts/plot_embeddings.py, scripts/results_table.py and the model card."""
from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import REPO
from clusterns.modeling.encoder import EncoderConfig, SentenceEncoder
from clusterns.cli.model_card import results_table_main
from clusterns.export.model_card import render_model_card, write_model_card
from clusterns.export.results import results_markdown
from clusterns.cli.model_card import main as model_card_main

pytest.importorskip("matplotlib")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_png(path, min_side=200):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(str(path))
    assert min(image.shape[:2]) >= min_side
    assert image[..., :3].std() > 0.01  # something was drawn


# ---- plot_training --------------------------------------------------------------------------------
def synthetic_state(steps=40, every=4, eval_every=10) -> dict:
    history = []
    for step in range(every, steps + 1, every):
        history.append({
            "loss": 2.0 / step, "learning_rate": 3e-5 * (1 - step / steps), "grad_norm": 1.0, "epoch": step / 100, "step": step,
            "sim/pos": 0.8 + step / 1000, "sim/neg": 0.1, "cluster/active": float(step > 8), "cluster/size_min": 0.0,
            "cluster/size_median": 2.0, "cluster/size_max": 5.0 + step / 10, "cluster/empty": 3.0, "bml/loss": 0.01,
            "rtd/acc": 0.5 + step / 200,
        })
        if step % eval_every == 0:
            history.append({"eval_stsb_spearman": 0.7 + step / 1000, "eval_sickr_spearman": 0.65, "eval_avg_sts": 0.7,
                            "eval_alignment": 0.2, "eval_uniformity": -2.5, "eval_MR": 80.0, "epoch": step / 100, "step": step})
    history.append({"train_runtime": 10.0, "train_loss": 0.1, "epoch": 0.4, "step": steps})
    return {"log_history": history, "best_metric": 0.74, "best_model_checkpoint": "result/x/checkpoint-40", "global_step": steps}


def test_plot_training_writes_the_three_figures(tmp_path):
    plot = load_script("plot_training")
    (tmp_path / "trainer_state.json").write_text(json.dumps(synthetic_state()))
    assert plot.main([str(tmp_path), "--smooth", "2"]) == 0
    for name in ("loss.png", "dev.png", "objective.png"):
        assert_png(tmp_path / "plots" / name)
    state = synthetic_state()
    train, evals = plot.split_history(state["log_history"])
    groups = plot.objective_groups(train)
    assert set(groups) == {"sim", "cluster", "bml", "rtd"}
    assert "cluster/size_max" in groups["cluster"] and "loss" not in sum(groups.values(), [])
    assert plot.series(evals, "eval_stsb_spearman")[0] == [20, 40]
    assert plot.best_step_of(state) == 40
    assert plot.smooth([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]


def test_plot_training_reads_the_latest_checkpoint_and_reports_errors(tmp_path, capsys):
    plot = load_script("plot_training")
    for step in (10, 20):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps(synthetic_state(steps=step)))
    assert plot.find_state(str(tmp_path)) == tmp_path / "checkpoint-20" / "trainer_state.json"
    assert plot.main([str(tmp_path), "--output_dir", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / "loss.png").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert plot.main([str(empty)]) == 2
    assert "no trainer_state.json" in capsys.readouterr().err


def test_plot_training_says_why_a_plot_is_missing(tmp_path, capsys):
    plot = load_script("plot_training")
    # a run shorter than its logging interval: nothing to plot, and the message names the flag
    short = {"log_history": [{"train_runtime": 1.0, "train_loss": 0.1, "epoch": 0.1, "step": 6}], "global_step": 6, "logging_steps": 500}
    (tmp_path / "trainer_state.json").write_text(json.dumps(short))
    assert plot.main([str(tmp_path)]) == 2
    assert "the run trained 6 step(s) and logs every 500 (--logging_steps" in capsys.readouterr().err
    # training logged, no evaluation: loss and objective plots, and a line for the missing dev plot
    state = synthetic_state(eval_every=1000)
    state["logging_steps"] = 4
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    assert plot.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "no dev.png: no dev evaluation was logged: train with --eval_strategy steps --eval_steps N" in printed
    assert "wrote" in printed and (tmp_path / "plots" / "loss.png").exists()


# ---- plot_embeddings ------------------------------------------------------------------------------
def test_plot_embeddings_clusters_by_the_stored_centroids(tiny_bert, tiny_sts_dir, tmp_path, capsys):
    plot = load_script("plot_embeddings")
    torch.manual_seed(0)
    encoder = SentenceEncoder.from_backbone(str(tiny_bert), EncoderConfig(pooler_type="cls", projector="simcse_mlp",
                                                                        mlp_only_train=True), dropout_prob=0.0).eval()
    torch.nn.init.normal_(encoder.projector.dense.weight, std=0.5)
    model_dir = tmp_path / "clusterns-model"
    encoder.save_pretrained(model_dir)
    sentences = plot.load_sentences(plot.stsb_file(str(tiny_sts_dir), "dev"), None, 0)
    assert len(sentences) == len(set(sentences)) > 40
    # centroids: the training-space (after-projector) vectors of 3 sentences
    train_space = plot.training_space(encoder, sentences, 16)
    centroids = torch.tensor(train_space[[0, 5, 9]])
    save_file({"cluster.centroids": centroids, "cluster.started": torch.tensor(True),
               "cluster.start_step": torch.tensor(1), "cluster.num_forwards": torch.tensor(6)},
              str(model_dir / "objective.safetensors"))
    emb = encoder.encode(sentences)
    assert not np.allclose(emb, train_space)  # --mlp_only_train: encode() is before the projector
    labels, how = plot.assign(str(model_dir), encoder, sentences, emb, None, 0, 16)
    z = plot.normalise(train_space)
    expected = np.argmax(z @ plot.normalise(centroids.numpy()).T, axis=1)
    np.testing.assert_array_equal(labels, expected)
    assert labels[0] == 0 and labels[5] == 1 and labels[9] == 2
    assert how.startswith("ClusterNS centroids (K=3")
    out = tmp_path / "emb.png"
    assert plot.main([str(model_dir), "--data_dir", str(tiny_sts_dir), "--output", str(out), "--max_sentences", "50"]) == 0
    assert_png(out)
    assert "ClusterNS centroids" in capsys.readouterr().out


def test_plot_embeddings_kmeans_for_other_models(tiny_bert, tiny_sts_dir, tmp_path, capsys):
    plot = load_script("plot_embeddings")
    out = tmp_path / "tsne.png"
    assert plot.main([str(tiny_bert), "--data_dir", str(tiny_sts_dir), "--method", "tsne", "--kmeans", "3",
                      "--max_sentences", "40", "--output", str(out)]) == 0
    assert_png(out)
    assert "k-means on the embeddings (K=3)" in capsys.readouterr().out
    assert plot.main([str(tiny_bert), "--data_dir", str(tmp_path)]) == 2


# ---- results tables and model card -----------------------------------------------------------------
STS_TABLE = {"STS12": 68.4, "STS13": 82.41, "STS14": 74.38, "STS15": 80.91, "STS16": 78.56, "STSBenchmark": 76.85,
             "SICKRelatedness": 72.23, "Avg.": 76.25}
TRANSFER_TABLE = {"MR": 81.18, "CR": 86.46, "SUBJ": 94.45, "MPQA": 88.88, "SST2": 85.5, "TREC": 89.8, "MRPC": 74.43, "Avg.": 85.81}
KORSTS = {"Cos P": 77.73, "Cos S": 76.96, "Euc P": 77.21, "Euc S": 76.89, "Man P": 77.11, "Man S": 76.81, "Dot P": 77.74,
          "Dot S": 76.97, "Avg.": 77.18}


def payload(model, tasks, tables, mode="test", pooler="cls_before_pooler"):
    return {"model_name_or_path": model, "pooler": pooler, "mode": mode, "task_set": "na", "tasks": tasks,
            "tables": tables, "results": {t: {} for t in tasks}}


def test_results_markdown_papers_layout(tmp_path, capsys):
    sts_tasks = ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness"]
    transfer_tasks = ["MR", "CR", "MPQA", "SUBJ", "SST2", "TREC", "MRPC"]
    zero_transfer = {k: 0.0 for k in TRANSFER_TABLE}  # evaluation.py always prints the transfer table
    full = payload("result/unsup-simcse-bert", sts_tasks + transfer_tasks, {"sts": STS_TABLE, "transfer": TRANSFER_TABLE})
    partial = payload("result/other", ["STSBenchmark", "SICKRelatedness"],
                      {"sts": dict({k: 0.0 for k in STS_TABLE}, STSBenchmark=80.0, SICKRelatedness=70.0), "transfer": zero_transfer},
                      pooler=None)
    korean = payload("result/kodiffcse", ["KorSTS"], {"sts": {k: 0.0 for k in STS_TABLE}, "transfer": zero_transfer,
                                                      "korsts_test": KORSTS, "korsts_test_per_batch": KORSTS})
    text = results_markdown([("SimCSE", full), ("other", partial), ("KoDiffCSE", korean)])
    lines = text.splitlines()
    assert "| Model | STS12 | STS13 | STS14 | STS15 | STS16 | STS-B | SICK-R | Avg. |" in lines
    assert "| SimCSE | 68.40 | 82.41 | 74.38 | 80.91 | 78.56 | 76.85 | 72.23 | 76.25 |" in lines
    assert "| other | – | – | – | – | – | 80.00 | 70.00 | – |" in lines
    assert "| Model | MR | CR | SUBJ | MPQA | SST | TREC | MRPC | Avg. |" in lines
    assert "| SimCSE | 81.18 | 86.46 | 94.45 | 88.88 | 85.50 | 89.80 | 74.43 | 85.81 |" in lines
    assert not any(line.startswith("| other") and "81.18" in line for line in lines)
    assert "| Model | Avg. | Cos P | Cos S | Euc P | Euc S | Man P | Man S | Dot P | Dot S |" in lines
    assert lines.count("| KoDiffCSE | 77.18 | 77.73 | 76.96 | 77.21 | 76.89 | 77.11 | 76.81 | 77.74 | 76.97 |") == 2
    # the script: folders and files, labels by model folder + pooler
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "eval_test.json").write_text(json.dumps(full))
    (tmp_path / "a" / "not_eval.json").write_text(json.dumps({"x": 1}))
    (tmp_path / "b.json").write_text(json.dumps(partial))
    assert results_table_main([str(tmp_path / "a"), str(tmp_path / "b.json"), "--output", str(tmp_path / "t.md")]) == 0
    printed = capsys.readouterr().out
    assert "| unsup-simcse-bert (cls_before_pooler) | 68.40 |" in printed and "| other | – |" in printed
    assert (tmp_path / "t.md").read_text().strip() == printed.strip()
    assert results_table_main([str(tmp_path / "b.json"), "--labels", "mine"]) == 0
    assert "| mine | – |" in capsys.readouterr().out
    assert results_table_main([str(tmp_path / "missing")]) == 2


def test_dev_mode_tables():
    dev = payload("m", ["STSBenchmark", "SICKRelatedness", "MR"], {"sts": {"STSBenchmark": 82.5, "SICKRelatedness": 77.25},
                                                                  "transfer": dict({k: 0.0 for k in TRANSFER_TABLE}, MR=80.1)}, mode="dev")
    text = results_markdown([("m", dev)])
    assert "| Model | STS-B | SICK-R | Avg. |" in text and "| m | 82.50 | 77.25 | 79.88 |" in text
    assert "Transfer (dev accuracy)" in text and "| m | 80.10 | – |" in text


def test_evaluation_json_feeds_the_table_and_the_card(tiny_bert, tiny_sts_dir, tmp_path, capsys):
    """A real evaluation.py --output_json (STS-B + SICK-R test) goes into the table and the refreshed model card."""
    spec = importlib.util.spec_from_file_location("evaluation", REPO / "evaluation.py")
    evaluation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluation)
    model = tmp_path / "model"
    SentenceEncoder.from_backbone(str(tiny_bert), EncoderConfig(pooler_type="avg", projector="none")).save_pretrained(model)
    assert evaluation.main(["--model_name_or_path", str(model), "--task_set", "na", "--tasks", "STSBenchmark", "SICKRelatedness",
                            "--data_dir", str(tiny_sts_dir), "--output_json", str(model / "eval_test.json")]) == 0
    data = json.loads((model / "eval_test.json").read_text())
    capsys.readouterr()
    assert results_table_main([str(model)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| model"))
    cells = row.strip("|").split("|")
    assert cells[6].strip() == f"{data['tables']['sts']['STSBenchmark']:.2f}" and cells[8].strip() == "–"
    # the card of a folder without training records still renders, with the test table
    assert model_card_main([str(model)]) == 0
    card = (model / "README.md").read_text()
    assert "### Test (evaluation.py)" in card and f"{data['tables']['sts']['SICKRelatedness']:.2f}" in card
    assert "No dev evaluation was run during training." in card


def test_model_card_from_a_run_config(tmp_path):
    run_config = {
        "model": {"model_name_or_path": "bert-base-uncased", "objective": "diffcse", "temp": 0.05, "hard_negative_weight": 0.0},
        "data": {"train_file": "data/wiki1m_for_simcse.txt", "max_seq_length": 32, "eval_data_dir": "SentEval/data/downstream"},
        "objective_args": {"lambda_weight": 0.005, "masking_ratio": 0.3},
        "training": {"learning_rate": 7e-6, "per_device_train_batch_size": 64, "gradient_accumulation_steps": 1, "max_steps": -1,
                     "num_train_epochs": 2, "seed": 42, "eval_strategy": "steps", "eval_steps": 125,
                     "metric_for_best_model": "stsb_spearman"},
        "world_size": 2,
    }
    (tmp_path / "clusterns_config.json").write_text(json.dumps({"pooler_type": "cls", "projector": "bn_mlp", "mlp_only_train": True}))
    path = write_model_card(tmp_path, run_config, {"eval_stsb_spearman": 0.8412, "train_loss": 0.5})
    card = open(path).read()
    assert "base_model: bert-base-uncased" in card and "- diffcse" in card
    for text in ("| global batch size | 128 |", "| epochs | 2 |", "| lambda_weight | 0.005 |", "| stsb_spearman | 84.12 |",
                 "--pooler cls_before_pooler", "`data/wiki1m_for_simcse.txt`"):
        assert text in card, text
    # a local base model is not hub metadata
    run_config["model"]["model_name_or_path"] = str(tmp_path)
    assert "base_model:" not in render_model_card(str(tmp_path), run_config, {})


def test_model_card_cli_errors(tmp_path, capsys):
    assert model_card_main([str(tmp_path / "missing")]) == 2
    shutil.rmtree(tmp_path, ignore_errors=True)
