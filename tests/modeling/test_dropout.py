"""The CPU dropout (clusterns/modeling/dropout.py, --fast_dropout): each element dropped independently with probability
p, the kept ones scaled by 1/(1-p), forward and backward; seeded like torch's; swapped into a backbone without changing
its weights or its eval outputs; the packed attention's dropout path equals SDPA without dropout."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clusterns.modeling.dropout import CpuDropout, dropout, keep_mask, use_cpu_dropout
from clusterns.modeling.packing import attention_with_dropout


def within_binomial(count: int, n: int, p: float, sigmas: float = 6.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1e-3])
def test_each_element_is_dropped_with_probability_p(p):
    torch.manual_seed(0)
    mask = keep_mask((1000, 1001), p)  # an odd count: the last 64-bit draw is half used
    n = mask.numel()
    assert mask.dtype == torch.bool and mask.shape == (1000, 1001)
    assert within_binomial(int((~mask).sum()), n, p)
    flat = (~mask).reshape(-1)[: n - n % 2]  # whole draws: elements 2i and 2i + 1
    both = int((flat[0::2] & flat[1::2]).sum())  # the two halves of one draw: independent
    assert within_binomial(both, flat.numel() // 2, p * p)
    neighbours = int(((~mask)[:, :-1] & (~mask)[:, 1:]).sum())
    assert within_binomial(neighbours, mask[:, :-1].numel(), p * p, sigmas=8.0)


def test_forward_and_backward_scale_the_kept_elements():
    torch.manual_seed(1)
    x = torch.randn(300, 7, dtype=torch.float64).abs().add(0.1).requires_grad_()  # no zero: kept = nonzero output
    y = dropout(x, 0.25)
    kept = y != 0
    assert 0 < int(kept.sum()) < x.numel()
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    g = torch.randn_like(x)
    y.backward(g)
    torch.testing.assert_close(x.grad, torch.where(kept, g / 0.75, torch.zeros_like(g)))


def test_identity_in_eval_and_at_p_zero_and_zeros_at_p_one():
    x = torch.randn(5, 3)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    assert not dropout(x, 1.0).any()


def test_the_same_seed_gives_the_same_mask_and_the_generator_advances():
    torch.manual_seed(7)
    a = keep_mask((64, 64), 0.1)
    b = keep_mask((64, 64), 0.1)
    torch.manual_seed(7)
    assert torch.equal(keep_mask((64, 64), 0.1), a) and not torch.equal(a, b)
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(keep_mask((10,), 0.5, gen), keep_mask((10,), 0.5, torch.Generator().manual_seed(3)))


def test_bf16_inputs_keep_their_dtype():
    x = torch.randn(40, 8, dtype=torch.bfloat16, requires_grad=True)
    y = dropout(x, 0.1)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16


def test_swapped_into_a_backbone_without_changing_weights_or_eval_outputs(tiny_bert):
    from transformers import AutoModel

    plain = AutoModel.from_pretrained(tiny_bert).eval()
    swapped = AutoModel.from_pretrained(tiny_bert).eval()
    count = sum(type(m) is nn.Dropout for m in swapped.modules())
    assert count > 0 and use_cpu_dropout(swapped) == count
    assert not any(type(m) is nn.Dropout for m in swapped.modules())
    assert all(m.p == plain.config.hidden_dropout_prob or m.p == plain.config.attention_probs_dropout_prob
               for m in swapped.modules() if isinstance(m, CpuDropout))
    assert swapped.state_dict().keys() == plain.state_dict().keys()
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])
    mask = (ids != 0).long()
    torch.testing.assert_close(swapped(input_ids=ids, attention_mask=mask).last_hidden_state,
                               plain(input_ids=ids, attention_mask=mask).last_hidden_state)
    swapped.train()
    assert not torch.allclose(swapped(input_ids=ids, attention_mask=mask).last_hidden_state,
                              swapped(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_attention_with_dropout_equals_sdpa_at_p_zero_and_drops_probabilities():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 6, 4, dtype=torch.float64) for _ in range(3))
    keys = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)[:, None, None, :]
    bias = torch.zeros(keys.shape, dtype=torch.float64).masked_fill(~keys, float("-inf"))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, scale=0.3)
    torch.testing.assert_close(attention_with_dropout(q, k, v, bias, 0.0, 0.3), expected)
    # v = 1: each output is its row's kept probabilities x 1/(1-p): in [0, 2] at p = 0.5, and 1 on average (unbiased)
    q, k = torch.randn(64, 4, 16, 8, dtype=torch.float64), torch.randn(64, 4, 16, 8, dtype=torch.float64)
    out = attention_with_dropout(q, k, torch.ones(64, 4, 16, 8, dtype=torch.float64), torch.zeros(64, 1, 1, 16), 0.5, 0.3)
    assert (out >= 0).all() and (out <= 2.0 + 1e-9).all() and not torch.allclose(out, torch.ones_like(out))
    assert abs(float(out[..., 0].mean()) - 1.0) < 0.03


def test_the_packed_training_forward_uses_it_on_the_cpu(tiny_bert, monkeypatch):
    from clusterns.modeling import packing
    from clusterns.training.run import build_encoder, parse_args

    calls = []
    real = packing.attention_with_dropout
    monkeypatch.setattr(packing, "attention_with_dropout", lambda *a: calls.append(1) or real(*a))
    for fast, expected in (("true", True), ("false", False)):
        calls.clear()
        model_args, data_args, _, _ = parse_args(["--model_name_or_path", str(tiny_bert), "--output_dir", "/tmp/unused", "--use_cpu",
                                                  "--pooler_type", "avg", "--fast_dropout", fast])
        encoder = build_encoder(model_args, data_args, None)
        assert any(isinstance(m, CpuDropout) for m in encoder.backbone.modules()) is expected
        encoder.train()
        ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])
        out = encoder(ids, (ids != 0).long())
        out.sum().backward()
        assert torch.isfinite(out).all() and bool(calls) is expected
