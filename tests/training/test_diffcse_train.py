"""DiffCSE end to end through train.py: tiny BERT and RoBERTa (generator = a tiny masked LM built from the same
tokenizer), logs, checkpoints (encoder loads with AutoModel; discriminator / RTD head / BN statistics beside it),
resume, start-up errors; and a KoDiffCSE-style run on KorSTS with a tiny Korean character vocabulary."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

from conftest import REPO, data_mirror

RTD_KEYS = ("rtd/loss", "rtd/acc", "rtd/replaced_recall", "rtd/original_acc", "sim/pos", "sim/neg")


def run_train(argv):
    from clusterns.cli.train import train_main

    return train_main([str(a) for a in argv])


def build_generator(encoder_dir: Path, out: Path, seed: int = 1) -> Path:
    tok = AutoTokenizer.from_pretrained(str(encoder_dir))
    cfg = AutoConfig.from_pretrained(str(encoder_dir))
    cfg.num_hidden_layers = 1
    torch.manual_seed(seed)
    AutoModelForMaskedLM.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def base_argv(model, generator, corpus, sts_dir, out, max_steps=6):
    return [
        "--model_name_or_path", model, "--generator_name", generator, "--train_file", corpus, "--objective", "diffcse",
        "--output_dir", out, "--batchnorm", "--lambda_weight", 0.005, "--masking_ratio", 0.3,
        "--per_device_train_batch_size", 8, "--max_steps", max_steps, "--use_cpu", "--logging_steps", 1,
        "--save_steps", 3, "--eval_strategy", "steps", "--eval_steps", 3, "--eval_data_dir", sts_dir,
        "--metric_for_best_model", "stsb_spearman", "--pooler_type", "cls", "--mlp_only_train", "--seed", 42,
        "--report_to", "none",
    ]


@pytest.fixture(scope="module")
def generators(tiny_bert, tiny_roberta, tmp_path_factory):
    root = tmp_path_factory.mktemp("generators")
    return {"bert": build_generator(tiny_bert, root / "bert-gen"), "roberta": build_generator(tiny_roberta, root / "roberta-gen")}


@pytest.fixture(scope="module")
def trained_bert(tiny_bert, generators, tiny_corpus, tiny_sts_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("diffcse-bert") / "run"
    run_train(base_argv(tiny_bert, generators["bert"], tiny_corpus, tiny_sts_dir, out))
    return out


def test_bert_logs_rtd_and_similarity(trained_bert):
    state = json.loads((trained_bert / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3, 4, 5, 6]
    for h in logged:
        for key in RTD_KEYS:
            assert key in h and h[key] == h[key], key  # present and not NaN
        assert 0 <= h["rtd/acc"] <= 1 and 0 <= h["rtd/replaced_recall"] <= 1 and 0 <= h["rtd/original_acc"] <= 1
        assert h["rtd/loss"] > 0
    evals = [h for h in state["log_history"] if "eval_stsb_spearman" in h]
    assert [h["step"] for h in evals] == [3, 6]


def test_bert_checkpoints(trained_bert, tiny_bert):
    for step in (3, 6):
        ckpt = trained_bert / f"checkpoint-{step}"
        state = load_file(str(ckpt / "objective.safetensors"))
        assert state and all(k.startswith(("discriminator.backbone.", "rtd_head.")) for k in state)
        assert not any("generator" in k for k in state)
        assert state["rtd_head.weight"].shape == (2, 32)
        proj = load_file(str(ckpt / "projector.safetensors"))  # BN projector with its running statistics
        assert {"net.1.running_mean", "net.1.running_var", "net.4.running_mean", "net.4.running_var"} <= set(proj)
        assert int(proj["net.4.num_batches_tracked"]) == step
        cfg = json.loads((ckpt / "clusterns_config.json").read_text())
        assert cfg["projector"] == "bn_mlp" and cfg["mlp_only_train"] and cfg["objective"] == "diffcse"
    # The discriminator trained away from its initialisation (a copy of the pretrained encoder).
    init = load_file(str(Path(tiny_bert) / "model.safetensors"))
    disc = load_file(str(trained_bert / "checkpoint-6" / "objective.safetensors"))
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(disc[f"discriminator.backbone.{key}"], init[key])
    # The output folder is the sentence encoder only: plain AutoModel loads it, and so does our encoder.
    model = AutoModel.from_pretrained(str(trained_bert))
    assert model.config.hidden_size == 32
    from clusterns.modeling.encoder import SentenceEncoder

    enc = SentenceEncoder.from_pretrained(str(trained_bert))
    assert enc.config.eval_pooler == "cls_before_pooler"
    assert enc.encode(["a man is playing a guitar ."]).shape == (1, 32)


def test_resume_restores_the_objective_state(trained_bert, tiny_bert, generators, tiny_corpus, tiny_sts_dir, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(trained_bert / "checkpoint-3", resumed / "checkpoint-3")
    argv = base_argv(tiny_bert, generators["bert"], tiny_corpus, tiny_sts_dir, resumed)
    run_train(argv + ["--resume_from_checkpoint", resumed / "checkpoint-3"])
    a = load_file(str(trained_bert / "checkpoint-6" / "objective.safetensors"))
    b = load_file(str(resumed / "checkpoint-6" / "objective.safetensors"))
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def test_roberta_end_to_end(tiny_roberta, generators, tiny_corpus, tiny_sts_dir, tmp_path):
    out = tmp_path / "run"
    argv = base_argv(tiny_roberta, generators["roberta"], tiny_corpus, tiny_sts_dir, out, max_steps=4)
    argv += ["--generator_replace", "sample", "--rtd_reduction", "exclude_padding", "--no_generator_dropout", "--save_steps", 4]
    run_train(argv)
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert len(logged) == 4 and all(k in logged[-1] for k in RTD_KEYS)
    obj = load_file(str(out / "objective.safetensors"))
    assert "discriminator.backbone.embeddings.word_embeddings.weight" in obj
    AutoModel.from_pretrained(str(out))


# ---- start-up errors through train.py -------------------------------------------------------------


def expect_usage_error(argv, capsys, needle):
    with pytest.raises(SystemExit) as err:
        run_train(argv)
    assert err.value.code == 2
    assert needle in capsys.readouterr().err


def test_missing_generator_name(tiny_bert, tiny_corpus, tiny_sts_dir, tmp_path, capsys):
    argv = base_argv(tiny_bert, "x", tiny_corpus, tiny_sts_dir, tmp_path / "o")
    i = argv.index("--generator_name")
    del argv[i : i + 2]
    expect_usage_error(argv, capsys, "--generator_name is required")


def test_generator_with_another_vocabulary(tiny_bert, generators, tiny_corpus, tiny_sts_dir, tmp_path, capsys):
    argv = base_argv(tiny_bert, generators["roberta"], tiny_corpus, tiny_sts_dir, tmp_path / "o")
    expect_usage_error(argv, capsys, "does not share the encoder's vocabulary")


@pytest.mark.parametrize("ratio", ["0", "1", "1.5"])
def test_masking_ratio_outside_open_interval(ratio, tiny_bert, generators, tiny_corpus, tiny_sts_dir, tmp_path, capsys):
    argv = base_argv(tiny_bert, generators["bert"], tiny_corpus, tiny_sts_dir, tmp_path / "o")
    argv[argv.index("--masking_ratio") + 1] = ratio
    expect_usage_error(argv, capsys, "--masking_ratio")


def test_pad_to_max_length_is_refused(tiny_bert, generators, tiny_corpus, tiny_sts_dir, tmp_path, capsys):
    argv = base_argv(tiny_bert, generators["bert"], tiny_corpus, tiny_sts_dir, tmp_path / "o", max_steps=1)
    argv[argv.index("--eval_strategy") + 1] = "no"
    expect_usage_error(argv + ["--pad_to_max_length", "--save_strategy", "no"], capsys, "--pad_to_max_length")


# ---- KorSTS with a tiny Korean model ------------------------------------------------------------------


def build_tiny_korean(root: Path, texts: list[str]) -> tuple[Path, Path]:
    """A character-level WordPiece vocabulary over the KorSTS characters, a tiny BERT and a tiny MLM generator."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    chars = sorted({c for t in texts for c in t if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    enc_dir = root / "ko-bert"
    enc_dir.mkdir(parents=True)
    (enc_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # No lower-casing: BERT's lower-casing applies NFD, which would split Hangul syllables into jamo.
    tok = BertTokenizerFast.from_pretrained(str(enc_dir), do_lower_case=False, strip_accents=False)
    tok.model_max_length = 128
    tok.save_pretrained(enc_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128)
    BertModel(config).save_pretrained(enc_dir)
    return enc_dir, build_generator(enc_dir, root / "ko-gen")


@pytest.mark.slow
def test_kodiffcse_run_on_korsts(tiny_sts_dir, tmp_path):
    korsts = data_mirror() / "korsts"
    corpus_src = data_mirror() / "corpus" / "ko_sentences.txt"
    if not (korsts / "sts-dev.tsv").exists() or not corpus_src.exists():
        pytest.skip(f"KorSTS mirror not found under {data_mirror()}")
    from senteval.korsts import load_korsts_file

    texts = corpus_src.read_text(encoding="utf-8").splitlines()
    for split in ("dev", "test"):
        a, b, _ = load_korsts_file(str(korsts / f"sts-{split}.tsv"))
        texts += [" ".join(x) for x in a + b]
    enc_dir, gen_dir = build_tiny_korean(tmp_path, texts)
    tok = AutoTokenizer.from_pretrained(str(enc_dir))
    assert tok.unk_token_id not in tok("안전모를 쓴 한 남자가 춤을 추고 있다.")["input_ids"]
    corpus = tmp_path / "ko.txt"
    corpus.write_text("\n".join(corpus_src.read_text(encoding="utf-8").splitlines()[:64]) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    run_train([
        "--model_name_or_path", enc_dir, "--generator_name", gen_dir, "--train_file", corpus, "--objective", "diffcse",
        "--output_dir", out, "--masking_scheme", "kodiffcse", "--rtd_reduction", "sum_over_views", "--masking_ratio", 0.15,
        "--lambda_weight", 0.005, "--max_seq_length", 64, "--per_device_train_batch_size", 16, "--max_steps", 4,
        "--learning_rate", 5e-5, "--warmup_steps", 0.05, "--max_grad_norm", 0, "--use_cpu", "--logging_steps", 1,
        "--eval_strategy", "steps", "--eval_steps", 4, "--eval_korsts", "--korsts_dir", korsts,
        "--eval_data_dir", tiny_sts_dir, "--metric_for_best_model", "korsts_spearman", "--load_best_model_at_end",
        "--pooler_type", "cls", "--mlp_only_train", "--seed", 42, "--report_to", "none",
    ])
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [h for h in state["log_history"] if "eval_korsts_spearman" in h]
    assert len(evals) == 1 and -1 <= evals[0]["eval_korsts_spearman"] <= 1
    assert all(k in h for h in state["log_history"] if "loss" in h for k in RTD_KEYS)
    # The 8-metric KorSTS test table, whole set and KoDiffCSE's per-batch protocol.
    result_json = tmp_path / "korsts.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "evaluation.py"), "--model_name_or_path", str(out), "--pooler", "cls_before_pooler",
         "--task_set", "na", "--tasks", "KorSTS", "--korsts", "--korsts_dir", str(korsts), "--korsts_per_batch",
         "--max_seq_length", "64", "--mode", "test", "--device", "cpu", "--output_json", str(result_json)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for header in ("Cos P", "Cos S", "Euc P", "Euc S", "Man P", "Man S", "Dot P", "Dot S"):
        assert header in proc.stdout
    assert "per batch" in proc.stdout
