"""Any Hugging Face encoder as the backbone: tiny random BERT, RoBERTa, XLM-R, DeBERTa-v2, ModernBERT, ELECTRA,
DistilBERT, MPNet and ALBERT checkpoints (tests/tiny_backbones.py, no download) x every objective: 2 training steps,
then the saved folder through plain AutoModel, SentenceEncoder.from_pretrained and SentenceTransformer, each giving
the trained encoder's vectors; every pooler's export; packed == plain; prompts per tokenizer; the harness."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from conftest import REPO
from clusterns.cli import evaluate as evaluation
from clusterns.cli.train import train_main
from clusterns.export.folder import write_model_folder
from clusterns.io import PROJECTOR_WEIGHTS_NAME
from clusterns.modeling.backbones import marks_word_starts, pooler_slot
from clusterns.modeling.encoder import EncoderConfig, SentenceEncoder
from clusterns.modeling import packing
from clusterns.modeling.packing import enable_packed_linear, is_packed
from clusterns.modeling.prompt.arguments import PromptArguments, attach_prompt
from clusterns.modeling.prompt.templates import BERT_TEMPLATES, ROBERTA_TEMPLATES
from training.test_resume import Killed, assert_same_tensors, common_argv, kill_after_checkpoint
from tiny_backbones import ARCHITECTURES, build_tiny

SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer

ARCHS = list(ARCHITECTURES)
# SimCSE's MLP has an HF pooler slot (AutoModel's pooler_output is the MLP) in these; the others keep it in
# projector.safetensors
WITH_POOLER_SLOT = {"bert", "roberta", "xlm-roberta", "mpnet", "albert"}
PACKED = {"bert", "roberta", "xlm-roberta", "electra", "distilbert", "mpnet"}  # --packed_linear applies (modeling/packing.py)
SPACE_MARKING = {"roberta", "xlm-roberta", "deberta-v2", "modernbert", "albert"}  # Ġ / ▁ tokenizers
# (objective flags, pooler): each objective once, with its usual pooler
OBJECTIVES = {
    "infonce": (["--objective", "infonce"], "cls"),
    "clusterns": (["--objective", "clusterns", "--kmeans", "4", "--kmean_cosine", "0.4"], "avg"),
    "mixcse": (["--objective", "mixcse"], "cls"),
    "diffcse": (["--objective", "diffcse", "--generator_name", "{model}"], "cls"),
    "prompt": (["--objective", "infonce", "--mask_embedding_sentence", "--mask_embedding_sentence_delta"], "mask"),  # with denoising
}
SENTENCES = ["a man is playing a guitar .", "the dog runs .", "two children are sitting on the table outside ."]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    return {name: build_tiny(name, root / name) for name in ARCHS}


def train(model: Path, corpus: Path, out: Path, *extra: str) -> Path:
    train_main([str(a) for a in (
        "--model_name_or_path", model, "--train_file", corpus, "--output_dir", out, "--per_device_train_batch_size", 8,
        "--max_steps", 2, "--max_seq_length", 32, "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
        "--seed", 1, "--logging_steps", 1, "--do_train", *extra)])
    return out


def hf_inputs(encoder: SentenceEncoder):
    return encoder.tokenizer(SENTENCES, padding=True, return_tensors="pt")


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("arch", ARCHS)
def test_train_save_reload(arch, objective, tiny_models, tiny_corpus, tmp_path):
    model = tiny_models[arch]
    flags, pooler = OBJECTIVES[objective]
    out = train(model, tiny_corpus, tmp_path / "run", *[f.format(model=model) for f in flags], "--pooler_type", pooler)
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert state["global_step"] == 2 and len(losses) == 2 and np.isfinite(losses).all()

    encoder = SentenceEncoder.from_pretrained(out)
    saved = load_file(str(out / "model.safetensors"))
    own = encoder.backbone.state_dict()
    for key, value in own.items():  # bit-identical reload of the trained weights
        assert torch.equal(value, saved[key]), key
    vectors = encoder.encode(SENTENCES)
    assert vectors.shape == (3, 32) and np.isfinite(vectors).all()
    # a second load gives the same vectors bit for bit
    assert np.array_equal(SentenceEncoder.from_pretrained(out).encode(SENTENCES), vectors)

    # plain AutoModel: the trained backbone (and, where the architecture has an HF pooler, SimCSE's MLP as pooler_output)
    hf = AutoModel.from_pretrained(out).eval()
    batch = hf_inputs(encoder)
    with torch.no_grad():
        ours = encoder.backbone(**batch).last_hidden_state
        theirs = hf(**batch)
    torch.testing.assert_close(theirs.last_hidden_state, ours, rtol=1e-5, atol=1e-5)
    mlp_at_eval = encoder.config.projector == "simcse_mlp" and not encoder.config.mlp_only_train
    if mlp_at_eval and pooler == "cls":
        if arch in WITH_POOLER_SLOT:  # encode() pads its one batch as hf_inputs does: the same vectors
            torch.testing.assert_close(theirs.pooler_output, torch.from_numpy(vectors), rtol=1e-4, atol=1e-5)
        else:
            assert (out / PROJECTOR_WEIGHTS_NAME).is_file() and getattr(theirs, "pooler_output", None) is None

    # sentence-transformers: the same vectors as encode()
    st = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    np.testing.assert_allclose(st.encode(SENTENCES, convert_to_numpy=True), vectors, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooler", ["cls", "cls_before_pooler", "avg", "avg_top2", "avg_first_last"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_pooler_exports(arch, pooler, tiny_models, tmp_path):
    """Each pooler on each architecture: saved, reloaded and exported, the same vectors everywhere."""
    projector = "simcse_mlp" if pooler == "cls" else "none"
    encoder = SentenceEncoder.from_backbone(str(tiny_models[arch]), EncoderConfig(pooler_type=pooler, projector=projector))
    encoder.eval()
    vectors = encoder.encode(SENTENCES)
    write_model_folder(encoder, tmp_path / "out")
    again = SentenceEncoder.from_pretrained(tmp_path / "out")
    np.testing.assert_array_equal(again.encode(SENTENCES), vectors)
    st = SentenceTransformer(str(tmp_path / "out"), device="cpu", trust_remote_code=True)
    np.testing.assert_allclose(st.encode(SENTENCES, convert_to_numpy=True), vectors, rtol=1e-4, atol=1e-5)
    assert (pooler_slot(encoder.backbone.config) is not None) == (arch in WITH_POOLER_SLOT)


@pytest.mark.parametrize("pooler", ["avg_first_last", "cls_before_pooler"])
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_linear_equals_the_plain_forward(arch, pooler, tiny_models, caplog, monkeypatch):
    """--packed_linear where the layer shape allows it, else the plain forward with one log line; either way the
    pooled outputs and the gradients equal the plain backbone's. The cls pooler reads the last layer at one token
    per sentence: its last layer runs the query side for those tokens only (MPNet: its position bias row)."""
    torch.manual_seed(0)
    plain = SentenceEncoder.from_backbone(str(tiny_models[arch]), EncoderConfig(pooler_type=pooler))
    packed = SentenceEncoder.from_backbone(str(tiny_models[arch]), EncoderConfig(pooler_type=pooler))
    with caplog.at_level(logging.INFO, logger="clusterns.modeling.packing"):
        used = enable_packed_linear(packed.backbone)
    assert used == is_packed(packed.backbone) == (arch in PACKED)
    if not used:
        assert f"packed linear layers not used for {type(packed.backbone).__name__}" in caplog.text
    plain.eval(), packed.eval()
    batch = hf_inputs(plain)
    assert (batch["attention_mask"] == 0).any()  # padding present: packing has work to do
    a = plain.pooled(batch["input_ids"], batch["attention_mask"])
    calls = []
    original = packing.packed_layer
    monkeypatch.setattr(packing, "packed_layer", lambda *a, **k: calls.append(1) or original(*a, **k))
    b = packed.pooled(batch["input_ids"], batch["attention_mask"])
    assert len(calls) == (2 if used else 0)  # the packed forward really ran, in each of the 2 layers
    if used:
        assert packed.backbone._clusterns_packing.read_position_calls == (pooler == "cls_before_pooler")
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    a.pow(2).sum().backward(), b.pow(2).sum().backward()
    for (name, p), (_, q) in zip(plain.backbone.named_parameters(), packed.backbone.named_parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_uses_each_tokenizers_own_tokens(arch, tiny_models):
    """PromptBERT on each tokenizer: its own mask / CLS / SEP, the template pair that suits its space handling
    (a space on both sides of the sentence slot for Ġ/▁ tokenizers), and the denoising template tokenising as the
    training pieces (build_template checks it)."""
    encoder = SentenceEncoder.from_backbone(str(tiny_models[arch]), EncoderConfig(pooler_type="mask"))

    attach_prompt(encoder, PromptArguments(mask_embedding_sentence=True, prompt_templates="per_backbone"), 32)
    spec = encoder.pooling.spec(encoder)
    tok = encoder.tokenizer
    assert marks_word_starts(tok) == (arch in SPACE_MARKING)
    assert spec.t1.text == (ROBERTA_TEMPLATES if arch in SPACE_MARKING else BERT_TEMPLATES)[0]
    assert spec.t1.mask_id == tok.mask_token_id and spec.t1.empty_ids.count(tok.mask_token_id) == 1
    assert spec.t1.empty_ids[0] == tok.cls_token_id and spec.t1.empty_ids[-1] == tok.sep_token_id
    ids = encoder.tokenize(["a man is playing ."])["input_ids"][0]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and ids.count(tok.mask_token_id) == 1
    words = tok.convert_ids_to_tokens(ids)
    assert "this" in "".join(words).lower().replace("ġ", "").replace("▁", "")


@pytest.mark.parametrize("arch", ARCHS)
def test_harness_on_a_checkpoint_and_on_a_plain_folder(arch, tiny_models, tiny_corpus, tiny_sts_dir, tmp_path, capsys):
    out = train(tiny_models[arch], tiny_corpus, tmp_path / "run", "--pooler_type", "avg")
    for folder, pooler in ((out, []), (tiny_models[arch], ["--pooler", "avg"])):
        result = tmp_path / f"{folder.name}.json"
        rc = evaluation.main(["--model_name_or_path", str(folder), *pooler, "--mode", "dev", "--task_set", "na",
                              "--tasks", "STSBenchmark", "--data_dir", str(tiny_sts_dir), "--output_json", str(result),
                              "--device", "cpu"])
        assert rc == 0, capsys.readouterr().err
        spearman = json.loads(result.read_text())["results"]["STSBenchmark"]["dev"]["spearman"]
        assert -1 <= spearman <= 1


@pytest.mark.parametrize("arch", ARCHS)
def test_resume_is_exact(arch, tiny_models, small_corpus, tmp_path, monkeypatch):
    """4 steps straight == 2 steps, a kill after checkpoint-2, then --resume_from_checkpoint auto: bit-identical
    final weights (dropout on, fixed seed), on every architecture."""
    argv = common_argv(tiny_models[arch], small_corpus, "--objective", "infonce", "--pooler_type", "avg")
    argv[argv.index("--max_steps") + 1] = "4"
    train_main(argv + ["--output_dir", str(tmp_path / "straight")])
    with monkeypatch.context() as patch:
        kill_after_checkpoint(patch, 2)
        with pytest.raises(Killed):
            train_main(argv + ["--output_dir", str(tmp_path / "resumed")])
    train_main(argv + ["--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "auto"])
    assert_same_tensors(load_file(str(tmp_path / "straight" / "model.safetensors")),
                        load_file(str(tmp_path / "resumed" / "model.safetensors")))


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_mixed_precision_trains(arch, tiny_models, tiny_corpus, tmp_path):
    """--bf16 (the CPU's mixed precision; on a GPU the same autocast path): finite losses, fp32 weights saved."""
    out = train(tiny_models[arch], tiny_corpus, tmp_path / "run", "--bf16", "--pooler_type", "cls")
    losses = [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert all(t.dtype == torch.float32 for t in load_file(str(out / "model.safetensors")).values() if t.is_floating_point())


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_prob_reaches_every_dropout_of_the_architecture(arch, tiny_models):
    """--dropout_prob is SimCSE's noise: it must set the architecture's own dropout fields (DistilBERT `dropout`,
    ModernBERT `embedding_dropout`/`mlp_dropout`/...), not only BERT's names, which those configs ignore."""
    encoder = SentenceEncoder.from_backbone(str(tiny_models[arch]), EncoderConfig(pooler_type="avg"), dropout_prob=0.0)
    encoder.train()
    batch = hf_inputs(encoder)
    a = encoder.pooled(batch["input_ids"], batch["attention_mask"])
    b = encoder.pooled(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # no dropout left: two training passes agree
    noisy = SentenceEncoder.from_backbone(str(tiny_models[arch]), EncoderConfig(pooler_type="avg"), dropout_prob=0.3)
    noisy.train()
    assert not torch.equal(noisy.pooled(batch["input_ids"], batch["attention_mask"]),
                           noisy.pooled(batch["input_ids"], batch["attention_mask"]))


@pytest.mark.parametrize("arch", ["distilbert", "deberta-v2"])  # (CI time: the others run the same code path)
def test_bench_train_runs_on_the_architecture(arch, tiny_models, tmp_path):
    """scripts/bench_train.py --model_name_or_path DIR on architectures of other shapes than BERT (DistilBERT names
    its feed-forward width hidden_dim; DeBERTa is not packed): it runs and reports the packed-vs-plain ratio and
    whether packing was used."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_train.py"), "--model_name_or_path", str(tiny_models[arch]),
                           "--configs", "infonce,infonce-nopack", "--batch_size", "8", "--max_seq_length", "16", "--warmup", "1",
                           "--steps", "1", "--repeat", "1", "--threads", "1", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "infonce_nopack_vs_infonce:" in proc.stdout
    report = json.loads(out.read_text())
    assert report["summary"]["infonce"]["packed_linear"] == (arch in PACKED) and "infonce_nopack_vs_infonce" in report["ratios"]


@pytest.mark.parametrize("arch", sorted(set(ARCHS) - WITH_POOLER_SLOT))
def test_hf_pooler_projector_is_refused_without_an_hf_pooler(arch, tiny_models, tiny_corpus, tmp_path, capsys):
    """--projector hf_pooler (KoDiffCSE's pretrained pooler as the MLP) on an architecture that has none: one line,
    exit code 2, instead of a fresh MLP standing in for the pretrained one."""
    with pytest.raises(SystemExit) as exit_info:
        train(tiny_models[arch], tiny_corpus, tmp_path / "run", "--projector", "hf_pooler")
    assert exit_info.value.code == 2
    assert "--projector hf_pooler needs the checkpoint's pretrained pooler" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.safetensors").exists()
