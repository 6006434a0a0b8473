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

from conftest import REPO, require_mirror

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


# ---- KoDiffCSE: the pretrained pooler, KorSTS selection ---------------------------------------------------


def test_cond_source_hf_pooler_starts_from_the_checkpoint_pooler(tiny_roberta, generators):
    """--cond_source hf_pooler: the projector is the checkpoint's pretrained pooler (dense+tanh, its weights), so the
    contrastive and conditioning vector is HF's pooler_output; the default is SimCSE's fresh MLP."""
    from transformers import AutoModel

    from clusterns.objectives.diffcse.objective import DiffCSEArguments
    from clusterns.training.run import build_encoder, parse_args

    flags = ["--model_name_or_path", tiny_roberta, "--objective", "diffcse", "--generator_name", generators["roberta"],
             "--output_dir", "unused", "--pooler_type", "cls"]
    model_args, data_args, by_class, _ = parse_args([str(a) for a in [*flags, "--cond_source", "hf_pooler"]])
    encoder = build_encoder(model_args, data_args, by_class[DiffCSEArguments])
    hf = AutoModel.from_pretrained(tiny_roberta)
    assert encoder.config.projector == "hf_pooler" and getattr(encoder.backbone, "pooler", None) is None
    torch.testing.assert_close(encoder.projector.dense.weight, hf.pooler.dense.weight, rtol=0, atol=0)
    torch.testing.assert_close(encoder.projector.dense.bias, hf.pooler.dense.bias, rtol=0, atol=0)
    batch = encoder.tokenizer(["a dog runs", "a man"], padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = encoder.projector(encoder.pooled(batch["input_ids"], batch["attention_mask"]))
        expected = hf(**batch).pooler_output
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-6)
    model_args, data_args, by_class, _ = parse_args([str(a) for a in flags])
    fresh = build_encoder(model_args, data_args, by_class[DiffCSEArguments])
    assert fresh.config.projector == "simcse_mlp" and not torch.equal(fresh.projector.dense.weight, hf.pooler.dense.weight)


@pytest.mark.parametrize("extra, needle", [
    (["--cond_source", "hf_pooler", "--batchnorm"], "--cond_source hf_pooler uses the checkpoint's pooler"),
    (["--cond_source", "hf_pooler", "--projector", "simcse_mlp"], "--projector simcse_mlp was given"),
    (["--before_mlp", "--cond_source", "hf_pooler"], "--before_mlp means --cond_source pre_projector"),
    (["--cond_source", "pooler"], "--cond_source must be one of"),
])
def test_cond_source_conflicts(extra, needle, tiny_bert, generators, tiny_corpus, tiny_sts_dir, tmp_path, capsys):
    argv = [a for a in base_argv(tiny_bert, generators["bert"], tiny_corpus, tiny_sts_dir, tmp_path / "o") if a != "--batchnorm"]
    expect_usage_error(argv + extra, capsys, needle)


def write_korsts(folder: Path, sentences: list[str]) -> Path:
    """A KorSTS-format sts-dev.tsv (header + genre filename year id score sentence1 sentence2) over `sentences`."""
    folder.mkdir(parents=True)
    rows = ["genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2"]
    for i in range(24):
        rows.append(f"g\tf\t2012\t{i:04d}\t{(i * 7) % 6:.3f}\t{sentences[i]}\t{sentences[(i * 5 + 1) % len(sentences)]}")
    (folder / "sts-dev.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_korsts_selection_needs_no_english_data(tiny_bert, generators, tiny_corpus, tmp_path):
    """--eval_korsts alone: KorSTS dev is the only dev set (not read: STS-B, SICK), the selection metric by default."""
    korsts = write_korsts(tmp_path / "korsts", tiny_corpus.read_text().splitlines())
    argv = base_argv(tiny_bert, generators["bert"], tiny_corpus, tmp_path / "nowhere", tmp_path / "run", max_steps=4)
    argv[argv.index("--metric_for_best_model"):argv.index("--metric_for_best_model") + 2] = []
    run_train([*argv, "--eval_korsts", "--korsts_dir", korsts])
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    evals = [h for h in state["log_history"] if "eval_korsts_spearman" in h]
    assert evals and not any(k.startswith(("eval_stsb", "eval_sickr", "eval_avg_sts")) for h in evals for k in h)
    assert state["best_metric"] == max(h["eval_korsts_spearman"] for h in evals)


@pytest.mark.parametrize("extra, needle", [
    (["--metric_for_best_model", "stsb_spearman"], "--metric_for_best_model stsb_spearman is not a metric of this run"),
    (["--eval_align_uniform"], "--eval_align_uniform evaluates the English dev sets"),
])
def test_english_metrics_without_the_english_sets_are_refused(extra, needle, tiny_bert, generators, tiny_corpus, tmp_path, capsys):
    korsts = write_korsts(tmp_path / "korsts", tiny_corpus.read_text().splitlines())
    argv = base_argv(tiny_bert, generators["bert"], tiny_corpus, tmp_path / "nowhere", tmp_path / "run")
    argv[argv.index("--metric_for_best_model"):argv.index("--metric_for_best_model") + 2] = []
    expect_usage_error([*argv, "--eval_korsts", "--korsts_dir", korsts, *extra], capsys, needle)


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


def test_kodiffcse_run_on_korsts(tmp_path):
    """KoDiffCSE as published on a tiny Korean model and the real KorSTS (in CI): the checkpoint's pretrained pooler as
    the contrastive and conditioning vector (--cond_source hf_pooler), selection on KorSTS dev alone with no English
    SentEval data anywhere (--eval_data_dir points nowhere), then the 8-metric KorSTS test table."""
    korsts = require_mirror("korsts", "sts-dev.tsv").parent
    corpus_src = require_mirror("corpus", "ko_sentences.txt")
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
        "--eval_data_dir", tmp_path / "no-english-data", "--load_best_model_at_end", "--cond_source", "hf_pooler",
        "--pooler_type", "cls", "--mlp_only_train", "--seed", 42, "--report_to", "none",
    ])
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [h for h in state["log_history"] if "eval_korsts_spearman" in h]
    assert len(evals) == 1 and -1 <= evals[0]["eval_korsts_spearman"] <= 1
    assert not any("eval_stsb_spearman" in h for h in state["log_history"])  # KorSTS dev alone
    assert state["best_metric"] == evals[0]["eval_korsts_spearman"]  # selected on it (the --eval_korsts default)
    assert json.loads((out / "clusterns_config.json").read_text())["projector"] == "hf_pooler"
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
