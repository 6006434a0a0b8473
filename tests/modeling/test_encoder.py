"""SentenceEncoder: encode() semantics, checkpoints that plain AutoModel loads, safe loading."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel

from clusterns.modeling.encoder import CONFIG_NAME, EncoderConfig, SentenceEncoder, forward_bounds

SENTENCES = [
    "a man is playing a guitar .",
    "dog",
    "the cat is eating food on the table with two children near the big red car",
    "a girl is riding a horse .",
    "two people are walking",
]


@pytest.fixture(scope="module")
def encoder(tiny_bert):
    enc = SentenceEncoder.from_backbone(str(tiny_bert), EncoderConfig(pooler_type="cls", projector="simcse_mlp"))
    return enc.eval()


def test_encode_shape_dtype_and_input_order(encoder):
    emb = encoder.encode(SENTENCES, batch_size=2)
    assert emb.shape == (5, encoder.hidden_size) and emb.dtype == np.float32
    # one at a time (no padding at all) gives the same vectors: order restored, padding masked
    single = np.stack([encoder.encode(s) for s in SENTENCES])
    np.testing.assert_allclose(emb, single, atol=1e-5)


def test_forward_bounds_respect_the_batch_and_the_token_budget():
    lengths = [40, 30, 30, 10, 10, 10, 5]  # sorted longest first, as encode() sorts
    assert forward_bounds(lengths, 4) == [(0, 4), (4, 7)]
    assert forward_bounds(lengths, 4, tokens_per_forward=60) == [(0, 1), (1, 3), (3, 7)]  # 60 // 40, 60 // 30, 4 rows
    assert forward_bounds(lengths, 100, tokens_per_forward=10) == [(i, i + 1) for i in range(7)]
    assert forward_bounds([10, 5, 5, 5], 100, tokens_per_forward=10) == [(0, 1), (1, 3), (3, 4)]
    assert forward_bounds([500], 8, tokens_per_forward=100) == [(0, 1)]  # at least one sentence per pass
    assert forward_bounds([], 8, 100) == []
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        forward_bounds([3], 0)
    with pytest.raises(ValueError, match="tokens_per_forward must be at least 1"):
        forward_bounds([3], 4, tokens_per_forward=0)


def test_encode_token_budget_gives_the_same_vectors(encoder):
    """A budget of a few tokens per pass (one sentence each) and none (every sentence in one pass): equal vectors."""
    calls = []
    handle = encoder.backbone.register_forward_hook(lambda module, args, out: calls.append(1))
    try:
        split = encoder.encode(SENTENCES, batch_size=8, tokens_per_forward=4)
        assert len(calls) == len(SENTENCES)
        whole = encoder.encode(SENTENCES, batch_size=8, tokens_per_forward=10**6)
        assert len(calls) == len(SENTENCES) + 1
    finally:
        handle.remove()
    np.testing.assert_allclose(split, whole, atol=1e-5)
    np.testing.assert_allclose(encoder.encode(SENTENCES, batch_size=8), whole, atol=1e-5)  # the CPU default


def test_encode_tensor_and_normalize(encoder):
    emb = encoder.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    assert isinstance(emb, torch.Tensor)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(5))
    legacy = encoder.encode(SENTENCES, normalize=True)
    np.testing.assert_allclose(legacy, emb.numpy(), atol=1e-6)


def test_encode_restores_training_mode(encoder):
    encoder.train()
    encoder.encode(SENTENCES[:2])
    assert encoder.training
    encoder.eval()


def test_saved_encoder_reloads_bit_identical_and_with_plain_automodel(encoder, tmp_path):
    encoder.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["pooler_type"] == "cls" and config["projector"] == "simcse_mlp"
    before = encoder.encode(SENTENCES)
    after = SentenceEncoder.from_pretrained(tmp_path).encode(SENTENCES)
    assert np.array_equal(before, after)
    # plain AutoModel: pooler_output is the MLP (SimCSE's conversion, no script needed)
    model = AutoModel.from_pretrained(tmp_path).eval()
    batch = encoder.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    np.testing.assert_allclose(out.pooler_output.numpy(), before, atol=1e-5)
    raw = SentenceEncoder.from_pretrained(tmp_path, pooler="cls_before_pooler").encode(SENTENCES)
    np.testing.assert_allclose(out.last_hidden_state[:, 0].numpy(), raw, atol=1e-5)


def test_mlp_only_train_evaluates_raw_cls(tiny_bert, tmp_path):
    enc = SentenceEncoder.from_backbone(str(tiny_bert), EncoderConfig(pooler_type="cls", projector="simcse_mlp", mlp_only_train=True))
    assert enc.config.eval_pooler == "cls_before_pooler"
    enc.save_pretrained(tmp_path)
    raw = SentenceEncoder.from_pretrained(tmp_path, pooler="cls_before_pooler").encode(SENTENCES)
    np.testing.assert_array_equal(SentenceEncoder.from_pretrained(tmp_path).encode(SENTENCES), raw)


@pytest.mark.parametrize("pooler", ["avg", "avg_top2", "avg_first_last", "cls_before_pooler"])
def test_poolers_roundtrip_roberta(tiny_roberta, tmp_path, pooler):
    enc = SentenceEncoder.from_backbone(str(tiny_roberta), EncoderConfig(pooler_type=pooler, projector="none")).eval()
    enc.save_pretrained(tmp_path)
    np.testing.assert_array_equal(enc.encode(SENTENCES), SentenceEncoder.from_pretrained(tmp_path).encode(SENTENCES))


def test_plain_hf_checkpoint_with_cls_uses_its_pooler(tiny_bert, tmp_path):
    from transformers import BertModel

    model = BertModel.from_pretrained(tiny_bert)  # has a (random) pooler
    model.save_pretrained(tmp_path)
    enc = SentenceEncoder.from_backbone(str(tiny_bert), EncoderConfig(pooler_type="cls", projector="none"))
    enc.tokenizer.save_pretrained(tmp_path)
    emb = SentenceEncoder.from_pretrained(tmp_path, pooler="cls").encode(SENTENCES[:2])
    batch = enc.tokenizer(SENTENCES[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**batch).pooler_output.numpy()
    np.testing.assert_allclose(emb, expected, atol=1e-5)


def test_missing_path_and_missing_config_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SentenceEncoder.from_pretrained(tmp_path / "nope")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        SentenceEncoder.from_pretrained(tmp_path)


def test_pickle_weights_refused_without_trust_pickle(tiny_bert, tmp_path):
    from transformers import BertModel

    BertModel.from_pretrained(tiny_bert).save_pretrained(tmp_path, safe_serialization=False) if "safe_serialization" in BertModel.save_pretrained.__code__.co_varnames else None
    if not list(tmp_path.glob("*.bin")):
        # transformers 5 writes safetensors only: fake a pickle-only checkpoint
        model = BertModel.from_pretrained(tiny_bert)
        model.config.save_pretrained(tmp_path)
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="trust_pickle"):
        SentenceEncoder.from_pretrained(tmp_path)


def test_unknown_pooler_is_clear():
    with pytest.raises(ValueError, match="--pooler_type 'max'"):
        EncoderConfig(pooler_type="max")
