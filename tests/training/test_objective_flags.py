"""No method flag is silently ignored: the originals' command lines (no --objective) train their method, and a
flag of another objective than the one chosen stops the run (through train_main, on a tiny BERT)."""
from __future__ import annotations

import json
import logging

import pytest

from clusterns.cli.train import train_main


def argv(model, corpus, out, *extra):
    return [str(a) for a in (
        "--model_name_or_path", model, "--train_file", corpus, "--output_dir", out, "--per_device_train_batch_size", 8,
        "--max_steps", 2, "--use_cpu", "--logging_steps", 1, "--report_to", "none", "--disable_tqdm", "true",
        "--dataloader_num_workers", 0, "--seed", 1, *extra)]


def trained_objective(out) -> str:
    return json.loads((out / "training_args.json").read_text())["model"]["objective"]


def test_clusterns_command_line_without_objective_trains_clusterns(tiny_bert, tiny_corpus, tmp_path, caplog):
    """ClusterNS's train.py has no --objective: its flags select the method, and the log says so."""
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="clusterns"):
        train_main(argv(tiny_bert, tiny_corpus, out, "--kmeans", 4, "--kmean_cosine", 1.0, "--bml_weight", 1e-4))
    assert trained_objective(out) == "clusterns"
    assert (out / "objective.safetensors").exists()  # the centroid state of a ClusterNS run
    assert "objective clusterns inferred from --kmeans --kmean_cosine --bml_weight" in caplog.text


@pytest.mark.parametrize("flags, method", [(["--lambdas", 0.2], "mixcse"), (["--lambda=0.2"], "mixcse"),
                                           (["--no_enable_hardneg", "--kmeans", 4], "clusterns")])
def test_each_methods_flags_select_it(flags, method, tiny_bert, tiny_corpus, tmp_path):
    out = tmp_path / "run"
    train_main(argv(tiny_bert, tiny_corpus, out, *flags))
    assert trained_objective(out) == method


def test_a_flag_of_another_objective_stops_the_run(tiny_bert, tiny_corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train_main(argv(tiny_bert, tiny_corpus, tmp_path / "run", "--objective", "infonce", "--kmeans", 128))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --kmeans belongs to --objective clusterns, but --objective infonce was given: it would be "
                   "ignored; drop it or use --objective clusterns"]
    assert not (tmp_path / "run").exists()  # refused before anything was loaded or written


def test_flags_of_two_methods_without_objective_are_an_error(tiny_bert, tiny_corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train_main(argv(tiny_bert, tiny_corpus, tmp_path / "run", "--kmeans", 4, "--lambdas", 0.2))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "flags of several objectives were given without --objective" in err
    assert "--kmeans (clusterns)" in err and "--lambdas (mixcse)" in err


def test_prompt_flags_combine_with_any_objective(tiny_bert, tiny_corpus, tmp_path):
    """The prompt-encoder flags belong to the encoder, not to an objective."""
    out = tmp_path / "run"
    train_main(argv(tiny_bert, tiny_corpus, out, "--objective", "mixcse", "--lambdas", 0.2, "--mask_embedding_sentence",
                    "--prompt_templates", "per_backbone", "--max_seq_length", 16))
    assert trained_objective(out) == "mixcse"
    assert json.loads((out / "clusterns_config.json").read_text())["pooler_type"] == "mask"


@pytest.mark.parametrize("extra, metric", [([], "korsts_spearman"), (["--metric_for_best_model", "stsb_spearman"], "stsb_spearman")])
def test_eval_korsts_selects_on_korsts_unless_told_otherwise(extra, metric, tmp_path):
    from clusterns.training.run import parse_args

    *_, training_args = parse_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--use_cpu",
                                    "--eval_korsts", "--korsts_dir", str(tmp_path), "--load_best_model_at_end",
                                    "--eval_strategy", "steps", "--eval_steps", "5", *extra])
    assert training_args.metric_for_best_model == metric and training_args.greater_is_better is True


def test_an_abbreviated_flag_is_refused_not_silently_taken(tiny_bert, tiny_corpus, tmp_path, capsys):
    """argparse would read `--bml_weigh` as --bml_weight, out of sight of the objective check: refused instead."""
    with pytest.raises(SystemExit) as info:
        train_main(argv(tiny_bert, tiny_corpus, tmp_path / "run", "--bml_weigh", 0.5))
    assert info.value.code == 2
    assert "--bml_weigh" in capsys.readouterr().err
