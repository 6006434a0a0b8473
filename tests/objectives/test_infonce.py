"""InfoNCE math and poolers against the original SimCSE code's outputs (golden/simcse.json) and hand-checkable cases."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import golden_case
from clusterns.objectives.functional import cosine_matrix, infonce_logits, infonce_loss, similarity_logs
from clusterns.modeling.poolers import pool
from clusterns.modeling.projectors import MLPProjector


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def assert_close(got, exp, rtol=1e-6, atol=1e-9):
    exp = t(exp) if not isinstance(exp, torch.Tensor) else exp
    torch.testing.assert_close(got.to(exp.dtype), exp, rtol=rtol, atol=atol)


def test_two_orthogonal_pairs_by_hand():
    z1 = t([[1.0, 0.0], [0.0, 1.0]])
    z2 = t([[2.0, 0.0], [0.0, 3.0]])
    logits = infonce_logits(z1, z2, temp=1.0).double()
    assert_close(logits, [[1.0, 0.0], [0.0, 1.0]])
    # -log(e / (e + 1)) for each row
    assert infonce_loss(logits).item() == pytest.approx(math.log(1 + math.e) - 1.0)


def test_hard_negative_weight_only_on_own_column():
    z = torch.randn(3, 4, dtype=torch.float64)
    base = infonce_logits(z, z, 0.5, z3=z, hard_negative_weight=0.0)
    weighted = infonce_logits(z, z, 0.5, z3=z, hard_negative_weight=2.0)
    diff = weighted - base
    expected = torch.zeros(3, 6, dtype=diff.dtype)
    expected[torch.arange(3), 3 + torch.arange(3)] = 2.0
    assert_close(diff, expected, atol=1e-6)


def test_golden_infonce():
    case = golden_case("simcse", "simcse_infonce")
    z1 = t(case["inputs"]["z1"]).requires_grad_()
    z2 = t(case["inputs"]["z2"]).requires_grad_()
    logits = infonce_logits(z1.double(), z2.double(), case["params"]["temp"])
    # the shared function promotes to at least fp32; here we feed fp64 and compare in fp64
    logits64 = (cosine_matrix(z1, z2) / case["params"]["temp"])
    assert_close(logits64, case["expected"]["logits"])
    loss = infonce_loss(logits64)
    assert_close(loss, case["expected"]["loss"])
    loss.backward()
    assert_close(z1.grad, case["expected"]["grad_z1"])
    assert_close(z2.grad, case["expected"]["grad_z2"])
    assert_close(logits.double(), case["expected"]["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["simcse_infonce_hardneg_w0", "simcse_infonce_hardneg_w1"])
def test_golden_hard_negatives(name):
    case = golden_case("simcse", name)
    z1, z2, z3 = (t(case["inputs"][k]).requires_grad_() for k in ("z1", "z2", "z3"))
    w = case["params"]["hard_negative_weight"]
    temp = case["params"]["temp"]
    logits = torch.cat([cosine_matrix(z1, z2) / temp, cosine_matrix(z1, z3) / temp + w * torch.eye(len(z1), dtype=torch.float64)], 1)
    ours32 = infonce_logits(z1, z2, temp, z3, w)  # the production path (fp32)
    assert_close(ours32.double(), logits.detach(), rtol=1e-5, atol=1e-5)
    loss = infonce_loss(logits)
    assert_close(loss, case["expected"]["loss"])
    loss.backward()
    for key, tensor in (("grad_z1", z1), ("grad_z2", z2), ("grad_z3", z3)):
        assert_close(tensor.grad, case["expected"][key])


def test_golden_poolers_and_mlp():
    case = golden_case("simcse", "simcse_pooler_and_mlp")
    inputs, expected = case["inputs"], case["expected"]
    hidden = [t(h) for h in inputs["hidden_states"]]  # embeddings, layer 1, last
    mask = torch.tensor(inputs["attention_mask"])
    pooled = expected["pooled"]
    assert_close(pool("cls", mask, hidden[-1], tuple(hidden)), pooled["cls"])
    assert_close(pool("cls_before_pooler", mask, hidden[-1], tuple(hidden)), pooled["cls_before_pooler"])
    assert_close(pool("avg", mask, hidden[-1], tuple(hidden)), pooled["avg"])
    assert_close(pool("avg_top2", mask, hidden[-1], tuple(hidden)), pooled["avg_top2"])
    # SimCSE HEAD (the golden source) averages hidden_states[1] with the last layer.
    assert_close(pool("avg_first_last", mask, hidden[-1], tuple(hidden), first_layer_index=1), pooled["avg_first_last"])
    legacy = pool("avg_first_last", mask, hidden[-1], tuple(hidden), first_layer_index=0)
    assert not torch.allclose(legacy, t(pooled["avg_first_last"]))
    mlp = MLPProjector(hidden[0].shape[-1]).double()
    with torch.no_grad():
        mlp.dense.weight.copy_(t(inputs["mlp_weight"]))
        mlp.dense.bias.copy_(t(inputs["mlp_bias"]))
    assert_close(mlp(hidden[-1][:, 0]), expected["mlp_of_cls"])


def test_similarity_logs_by_hand():
    cos = t([[1.0, 0.2], [0.4, 0.8]])
    logs = similarity_logs(cos)
    assert logs["sim/pos"].item() == pytest.approx(0.9)
    assert logs["sim/neg"].item() == pytest.approx(0.3)


def test_golden_cl_forward_with_mlp():
    case = golden_case("simcse", "simcse_pooler_and_mlp")
    inputs, expected = case["inputs"], case["expected"]["cl_forward_pooler_cls"]
    cls = t(inputs["hidden_states"][-1])[:, 0]
    mlp = MLPProjector(cls.shape[-1]).double()
    with torch.no_grad():
        mlp.dense.weight.copy_(t(inputs["mlp_weight"]))
        mlp.dense.bias.copy_(t(inputs["mlp_bias"]))
    z = mlp(cls)
    z1, z2 = z[0::2], z[1::2]  # interleaved rows: 2i = view 1, 2i+1 = view 2
    assert_close(z1, expected["z1"])
    assert_close(z2, expected["z2"])
    logits = cosine_matrix(z1, z2) / case["params"]["temp"]
    assert_close(logits, expected["logits"])
    assert_close(infonce_loss(logits), expected["loss"])
