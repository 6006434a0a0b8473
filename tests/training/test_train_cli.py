"""train.py end to end on tiny random models, its flags, and its start-up errors."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoModel

from conftest import REPO
from clusterns.cli.train import train_main
from clusterns.modeling.encoder import SentenceEncoder


def base_args(model, corpus, out, *extra):
    return [
        "--model_name_or_path", str(model), "--train_file", str(corpus), "--output_dir", str(out),
        "--per_device_train_batch_size", "8", "--use_cpu", "--logging_steps", "2", "--report_to", "none",
        "--dataloader_num_workers", "0", *extra,
    ]


def run_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        train_main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_unsupervised_simcse_with_dev_selection(tiny_bert, tiny_corpus, tiny_sts_dir, tmp_path):
    out = tmp_path / "run"
    results = train_main(base_args(
        tiny_bert, tiny_corpus, out, "--max_steps", "6", "--pooler_type", "cls", "--mlp_only_train",
        "--evaluation_strategy", "steps", "--eval_steps", "3", "--metric_for_best_model", "stsb_spearman",
        "--load_best_model_at_end", "--eval_data_dir", str(tiny_sts_dir), "--do_train", "--do_eval", "--eval_align_uniform",
    ))
    assert "eval_stsb_spearman" in results and "eval_sickr_spearman" in results
    assert results["eval_alignment"] >= 0 and results["eval_uniformity"] <= 0
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [h for h in state["log_history"] if "eval_stsb_spearman" in h]
    assert [h["step"] for h in evals] == [3, 6]
    assert state["best_metric"] == max(h["eval_stsb_spearman"] for h in evals)
    losses = [h for h in state["log_history"] if "loss" in h]
    assert losses and all("sim/pos" in h for h in losses)
    # the final folder: plain AutoModel loads it; safetensors only; pooling recorded
    assert not list(out.glob("*.bin")) and (out / "model.safetensors").exists()
    config = json.loads((out / "clusterns_config.json").read_text())
    assert config["pooler_type"] == "cls" and config["mlp_only_train"] is True
    AutoModel.from_pretrained(out)
    encoder = SentenceEncoder.from_pretrained(out)
    emb = encoder.encode(["a man is playing a guitar .", "a dog runs"])
    assert emb.shape == (2, 32) and np.isfinite(emb).all()
    # the best checkpoint is what output_dir holds
    best = SentenceEncoder.from_pretrained(state["best_model_checkpoint"])
    np.testing.assert_array_equal(best.encode(["a dog runs"]), encoder.encode(["a dog runs"]))
    assert (out / "eval_results.txt").read_text().count(" = ") >= 3


def test_supervised_triples_on_roberta(tiny_roberta, tmp_path):
    csv = tmp_path / "nli.csv"
    rows = ["sent0,sent1,hard_neg"] + [f"a man is playing {i},a person plays {i},a dog sleeps {i}" for i in range(24)]
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "sup"
    results = train_main(base_args(tiny_roberta, csv, out, "--max_steps", "3", "--hard_negative_weight", "1.0", "--do_train"))
    assert results["train_loss"] > 0
    assert json.loads((out / "clusterns_config.json").read_text())["projector"] == "simcse_mlp"


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--model_name_or_path", "--train_file", "--pooler_type", "--mlp_only_train", "--temp", "--max_seq_length",
                 "--objective", "--hard_negative_weight", "--first_layer_index", "--early_stop", "--eval_data_dir"):
        assert flag in out
    assert "infonce" in out


def test_unknown_objective(tiny_bert, tiny_corpus, tmp_path, capsys):
    err = run_error(base_args(tiny_bert, tiny_corpus, tmp_path / "o", "--objective", "barlow"), capsys)
    assert "--objective 'barlow'" in err and "infonce" in err


def test_unknown_pooler(tiny_bert, tiny_corpus, tmp_path, capsys):
    err = run_error(base_args(tiny_bert, tiny_corpus, tmp_path / "o", "--pooler_type", "max"), capsys)
    assert "--pooler_type 'max'" in err


def test_max_seq_length_above_model_limit(tiny_bert, tiny_corpus, tmp_path, capsys):
    err = run_error(base_args(tiny_bert, tiny_corpus, tmp_path / "o", "--max_seq_length", "4096"), capsys)
    assert "--max_seq_length 4096" in err and "128" in err


def test_missing_and_blank_train_files(tiny_bert, tmp_path, capsys):
    err = run_error(base_args(tiny_bert, tmp_path / "none.txt", tmp_path / "o", "--do_train"), capsys)
    assert "none.txt" in err and "does not exist" in err
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n\n")
    err = run_error(base_args(tiny_bert, blank, tmp_path / "o2", "--do_train"), capsys)
    assert "blank.txt" in err and "all blank" in err
    folder = tmp_path / "corpus"
    folder.mkdir()
    err = run_error(base_args(tiny_bert, folder, tmp_path / "o3", "--do_train"), capsys)  # a folder for a file
    assert "'" + str(folder) + "' is a folder; give the corpus file inside it" in err


def test_missing_model_folder_is_one_line(tiny_corpus, tmp_path, capsys):
    err = run_error(base_args(tmp_path / "no-such-model", tiny_corpus, tmp_path / "o", "--do_train"), capsys)
    assert "--model_name_or_path" in err and "no-such-model" in err and "does not exist" in err
    assert "Traceback" not in err


def test_csv_missing_named_columns(tiny_bert, tmp_path, capsys):
    csv = tmp_path / "pairs.csv"
    csv.write_text("premise,hypothesis\na,b\n")
    err = run_error(base_args(tiny_bert, csv, tmp_path / "o", "--sentence_columns", "sent0,sent1", "--do_train"), capsys)
    assert "pairs.csv" in err and "sent0" in err


def test_output_dir_of_another_run_is_protected(tiny_bert, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "something.txt").write_text("another run")
    err = run_error(base_args(tiny_bert, tiny_corpus, out, "--max_steps", "1", "--do_train"), capsys)
    assert "--overwrite_output_dir" in err
    train_main(base_args(tiny_bert, tiny_corpus, out, "--max_steps", "1", "--do_train", "--overwrite_output_dir"))


def test_normalise_argv_legacy_names_and_warmup_spelling(monkeypatch):
    from clusterns.training import arguments

    assert arguments.normalise_argv(["--evaluation_strategy", "steps", "--no_cuda"]) == ["--eval_strategy", "steps", "--use_cpu"]
    assert arguments.normalise_argv(["--evaluation_strategy=steps"]) == ["--eval_strategy=steps"]
    # transformers 4.x (warmup_ratio is a field, no alias): a fractional --warmup_steps is a ratio
    monkeypatch.setattr(arguments, "TRAINING_FIELDS", {"warmup_ratio", "warmup_steps"})
    monkeypatch.setattr(arguments, "FLAG_ALIASES", {})
    assert arguments.normalise_argv(["--warmup_steps", "0.05", "--seed", "1"]) == ["--warmup_ratio", "0.05", "--seed", "1"]
    assert arguments.normalise_argv(["--warmup_steps=0.1"]) == ["--warmup_ratio=0.1"]
    assert arguments.normalise_argv(["--warmup_steps", "500"]) == ["--warmup_steps", "500"]
    # transformers 5 (no warmup_ratio field; --warmup_ratio is the alias): --warmup_steps is left alone
    monkeypatch.setattr(arguments, "TRAINING_FIELDS", {"warmup_steps"})
    monkeypatch.setattr(arguments, "FLAG_ALIASES", {"--warmup_ratio": "--warmup_steps"})
    assert arguments.normalise_argv(["--warmup_steps", "0.05"]) == ["--warmup_steps", "0.05"]
    assert arguments.normalise_argv(["--warmup_ratio", "0.05"]) == ["--warmup_steps", "0.05"]


@pytest.mark.parametrize("flag, value, message", [
    ("--ddp_gradient", "halved", "--ddp_gradient must be exact or original, got 'halved'"),
    ("--centroid_update_per", "epoch", "--centroid_update_per"),
])
def test_bad_switch_values_stop_at_start_up(flag, value, message, tiny_bert, tiny_corpus, tmp_path, capsys):
    extra = ["--objective", "clusterns"] if flag == "--centroid_update_per" else []
    err = run_error(base_args(tiny_bert, tiny_corpus, tmp_path / "run", *extra, flag, value, "--max_steps", "1"), capsys)
    assert message in err and "Traceback" not in err


def test_objective_simcse_names_infonce(tiny_bert, tiny_corpus, tmp_path, capsys):
    err = run_error(base_args(tiny_bert, tiny_corpus, tmp_path / "run", "--objective", "simcse", "--max_steps", "1"), capsys)
    assert "--objective 'simcse' is not a registered name: simcse is --objective infonce here" in err
    assert not (tmp_path / "run").exists()


def test_fp16_without_a_gpu_warns_and_trains_in_fp32(tiny_bert, tiny_corpus, tmp_path, caplog):
    """SimCSE's own command lines pass --fp16: on a machine without a GPU it is a warning, and the run is fp32."""
    from clusterns.training.argv import without_flag

    assert without_flag(["--a", "--fp16", "true", "--b", "--fp16=1", "--fp16"], "fp16") == ["--a", "--b"]
    out = tmp_path / "run"
    results = train_main(base_args(tiny_bert, tiny_corpus, out, "--fp16", "--max_steps", "1"))
    assert results["train_loss"] > 0
    assert "--fp16 needs a CUDA GPU and this run has none: training runs in fp32" in caplog.text
    assert json.loads((out / "training_args.json").read_text())["training"]["fp16"] is False
