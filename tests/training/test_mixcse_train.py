"""MixCSE end to end: train.py on a tiny BERT, logs of the mixed logits, a saved checkpoint, batch-of-1 errors."""
from __future__ import annotations

import importlib.util
import json

import pytest


def has_dev_evaluator() -> bool:
    return importlib.util.find_spec("clusterns.training.dev_evaluator") is not None


def run_train(argv):
    from clusterns.cli.train import train_main

    return train_main([str(a) for a in argv])


def test_train_end_to_end_tiny_bert(tiny_bert, tiny_corpus, tiny_sts_dir, tmp_path):
    out = tmp_path / "run"
    argv = [
        "--model_name_or_path", tiny_bert, "--train_file", tiny_corpus, "--objective", "mixcse", "--output_dir", out,
        "--per_device_train_batch_size", 8, "--max_steps", 6, "--use_cpu", "--logging_steps", 2, "--learning_rate", 3e-5,
        "--pooler_type", "cls", "--lambdas", 0.2, "--mask_fill", "zero", "--temp", 0.05, "--seed", 42, "--report_to", "none",
    ]
    if has_dev_evaluator():
        argv += ["--eval_data_dir", tiny_sts_dir, "--eval_strategy", "steps", "--eval_steps", 3,
                 "--metric_for_best_model", "stsb_spearman", "--load_best_model_at_end"]
    run_train(argv)
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in logged] == [2, 4, 6]
    for h in logged:
        for key in ("mix/pos_logit", "mix/mixed_logit", "mix/neg_logit", "sim/pos", "sim/neg"):
            assert key in h and h[key] == h[key], key  # present and not NaN
        # B = 8: 3B = 24 logits per row; the loss of an untrained model is near log(24).
        assert 0 < h["loss"] < 10
    if has_dev_evaluator():
        assert any("eval_stsb_spearman" in h for h in state["log_history"])
    # The output loads with plain transformers, as every checkpoint of the framework.
    from transformers import AutoModel

    AutoModel.from_pretrained(out)
    run_config = json.loads((out / "run_args.json").read_text())
    assert run_config["objective"] == "mixcse"


def test_neginf_paper_modes_train(tiny_bert, tiny_corpus, tmp_path):
    for extra in (["--mask_fill=-inf"], ["--mixcse_mode", "paper"]):
        out = tmp_path / extra[-1].strip("-=")
        run_train([
            "--model_name_or_path", tiny_bert, "--train_file", tiny_corpus, "--objective", "mixcse", "--output_dir", out,
            "--per_device_train_batch_size", 4, "--max_steps", 2, "--use_cpu", "--logging_steps", 1, "--report_to", "none",
            *extra,
        ])
        logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
        assert len(logged) == 2 and all(h["loss"] == h["loss"] and h["mix/neg_logit"] == h["mix/neg_logit"] for h in logged)


def test_last_batch_of_one_is_a_clear_error(tiny_bert, tiny_corpus, tmp_path, capsys):
    corpus = tmp_path / "nine.txt"
    corpus.write_text("\n".join(tiny_corpus.read_text().splitlines()[:9]) + "\n")  # 9 = 8 + 1
    argv = ["--model_name_or_path", tiny_bert, "--train_file", corpus, "--objective", "mixcse", "--output_dir", tmp_path / "o",
            "--per_device_train_batch_size", 8, "--num_train_epochs", 1, "--use_cpu", "--report_to", "none"]
    with pytest.raises(SystemExit) as err:
        run_train(argv)
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "at least 2 sentences" in message and "--dataloader_drop_last" in message
    # ... and the advice works.
    run_train([*argv[:7], tmp_path / "o2", *argv[8:], "--dataloader_drop_last"])


def test_lambdas_out_of_range_fails_at_start_up(tiny_bert, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        run_train(["--model_name_or_path", tiny_bert, "--objective", "mixcse", "--output_dir", tmp_path, "--lambdas", "-0.5"])
    assert err.value.code == 2 and "--lambdas" in capsys.readouterr().err
