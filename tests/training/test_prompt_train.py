"""Prompt training end to end through train.py on tiny BERT / RoBERTa, then SentenceEncoder.from_pretrained(out).encode."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clusterns.cli.train import train_main
from clusterns.modeling.encoder import SentenceEncoder
from clusterns.modeling.prompt import BERT_TEMPLATES, ORIGINAL_DEFAULT_TEMPLATE, ROBERTA_TEMPLATES, get_spec, string_input

SENTENCES = ["a man is playing a guitar .", "a dog runs", "two children are eating food"]


def base_args(model, corpus, out, *extra):
    return [
        "--model_name_or_path", str(model), "--train_file", str(corpus), "--output_dir", str(out),
        "--per_device_train_batch_size", "8", "--use_cpu", "--logging_steps", "2", "--report_to", "none",
        "--dataloader_num_workers", "0", "--overwrite_output_dir", *extra,
    ]


def run_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        train_main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_clusterns_prompt_bert_with_dev_selection(tiny_bert, tiny_corpus, tiny_sts_dir, tmp_path):
    out = tmp_path / "run"
    results = train_main(base_args(
        tiny_bert, tiny_corpus, out, "--max_steps", "2", "--objective", "clusterns", "--kmeans", "4",
        "--kmean_cosine", "1.0", "--mask_embedding_sentence", "--mask_embedding_sentence_delta",
        "--mask_embedding_sentence_template", BERT_TEMPLATES[0],
        "--mask_embedding_sentence_different_template", BERT_TEMPLATES[1], "--mlp_only_train",
        "--eval_strategy", "steps", "--eval_steps", "1", "--metric_for_best_model", "stsb_spearman",
        "--load_best_model_at_end", "--eval_data_dir", str(tiny_sts_dir), "--do_train",
    ))
    assert results["train_loss"] > 0
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [h for h in state["log_history"] if "eval_stsb_spearman" in h]
    assert [h["step"] for h in evals] == [1, 2]
    logs = [h for h in state["log_history"] if "loss" in h]
    assert logs and logs[-1]["cluster/active"] > 0  # clustering started on the prompt embeddings
    config = json.loads((out / "clusterns_config.json").read_text())
    assert config["pooler_type"] == "mask" and config["projector"] == "simcse_mlp" and config["mlp_only_train"]
    assert config["prompt"]["template"] == BERT_TEMPLATES[0] and config["prompt"]["template2"] == BERT_TEMPLATES[1]
    assert config["prompt"]["delta"] and config["prompt"]["test_add_period"] and not config["prompt"]["test_delta"]
    run = json.loads((out / "training_args.json").read_text())
    assert run["model"]["pooler_type"] == "mask"

    encoder = SentenceEncoder.from_pretrained(out)  # the recorded template, final-test convention
    emb = encoder.encode(SENTENCES)
    assert emb.shape == (3, 32) and np.isfinite(emb).all()
    tok = encoder.tokenizer
    assert encoder.tokenize(["a dog runs"])["input_ids"][0] == tok.encode(string_input(BERT_TEMPLATES[0], tok.mask_token, "a dog runs", True))
    # the dev convention reproduces the selection metric of the best checkpoint
    dev = SentenceEncoder.from_pretrained(out, prompt_convention="consistent")
    from clusterns.training.dev_evaluator import SentEvalDevEvaluator

    metrics = SentEvalDevEvaluator(data_dir=str(tiny_sts_dir))(lambda s: dev.encode(s, batch_size=8))
    assert metrics["eval_stsb_spearman"] == pytest.approx(state["best_metric"], abs=1e-6)


def test_infonce_prompt_roberta_defaults(tiny_roberta, tiny_corpus, tmp_path):
    """--pooler_type mask alone turns the prompt on; original template defaults (both views on the RoBERTa
    'The sentence' template), no delta."""
    out = tmp_path / "run"
    train_main(base_args(tiny_roberta, tiny_corpus, out, "--max_steps", "2", "--pooler_type", "mask", "--do_train"))
    config = json.loads((out / "clusterns_config.json").read_text())
    assert config["prompt"]["template"] == config["prompt"]["template2"] == ORIGINAL_DEFAULT_TEMPLATE
    assert config["prompt"]["delta"] is False and config["mlp_only_train"] is False
    encoder = SentenceEncoder.from_pretrained(out, prompt_convention="dev")
    spec = get_spec(encoder)
    ids = encoder.tokenize(["a dog runs"])["input_ids"][0]
    assert ids == spec.t1.wrap(encoder.tokenizer.encode("a dog runs", add_special_tokens=False))
    emb = encoder.encode(SENTENCES)
    assert emb.shape == (3, 32) and np.isfinite(emb).all()


@pytest.mark.slow
def test_clusterns_prompt_roberta_pair_with_delta(tiny_roberta, tiny_corpus, tmp_path):
    out = tmp_path / "run"
    train_main(base_args(
        tiny_roberta, tiny_corpus, out, "--max_steps", "4", "--objective", "clusterns", "--kmeans", "4",
        "--kmean_cosine", "1.0", "--no_enable_hardneg", "--mask_embedding_sentence", "--mask_embedding_sentence_delta",
        "--prompt_templates", "per_backbone", "--delta_prefix_source", "own_template", "--mlp_only_train", "--do_train",
    ))
    config = json.loads((out / "clusterns_config.json").read_text())
    assert (config["prompt"]["template"], config["prompt"]["template2"]) == ROBERTA_TEMPLATES
    assert config["prompt"]["delta_prefix_source"] == "own_template"
    emb = SentenceEncoder.from_pretrained(out).encode(SENTENCES)
    assert emb.shape == (3, 32) and np.isfinite(emb).all()


@pytest.mark.parametrize("flag, template, message", [
    ("--mask_embedding_sentence_template", "*cls*_This_means*mask*.*sep+*", "exactly one sentence slot"),
    ("--mask_embedding_sentence_different_template", "*cls*_*sent_0*_means.*sep+*", "exactly one mask slot"),
])
def test_bad_template_is_a_clear_error(tiny_bert, tiny_corpus, tmp_path, capsys, flag, template, message):
    err = run_error(base_args(tiny_bert, tiny_corpus, tmp_path / "run", "--mask_embedding_sentence", flag, template), capsys)
    assert flag in err and message in err and "Traceback" not in err


def test_template_over_the_model_limit_is_a_clear_error(tiny_bert, tiny_corpus, tmp_path, capsys):
    err = run_error(base_args(tiny_bert, tiny_corpus, tmp_path / "run", "--mask_embedding_sentence",
                              "--max_seq_length", "120"), capsys)
    assert "--mask_embedding_sentence_template" in err and "--max_seq_length 120" in err and "limit of 128" in err


def test_prompt_needs_the_mask_pooler(tiny_bert, tiny_corpus, tmp_path, capsys):
    err = run_error(base_args(tiny_bert, tiny_corpus, tmp_path / "run", "--mask_embedding_sentence", "--pooler_type", "avg"), capsys)
    assert "--pooler_type mask" in err
