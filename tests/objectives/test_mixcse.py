"""MixCSE: the mixed-negative blocks against the original code's golden vectors and hand-checked cases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import golden_case, load_golden

from clusterns.precision import fp32_region
from clusterns.training.arguments import ModelArguments
from clusterns.objectives import get_objective_class, objective_argument_classes
from clusterns.objectives.base import EncodedViews
from clusterns.objectives.functional import cosine_matrix, infonce_logits, infonce_loss
from clusterns.objectives.mixcse import (
    MixCSEArguments,
    MixCSEObjective,
    mix_embeddings,
    mix_logit_logs,
    mixed_mask_positions,
    mixed_negative_blocks,
)

CASES = ["mixcse_lambda0.2_hnw0", "mixcse_lambda0.2_hnw1", "mixcse_lambda0.2_hnw0_temp1"]


def assert_close64(got, exp):
    """float64 criterion of golden/README.md: |got - exp| <= 1e-9 + 1e-6 |exp| per element."""
    got = torch.as_tensor(got, dtype=torch.float64)
    exp = torch.as_tensor(exp, dtype=torch.float64)
    assert got.shape == exp.shape, (got.shape, exp.shape)
    dev = (got - exp).abs()
    bad = dev > 1e-9 + 1e-6 * exp.abs()
    assert not bad.any(), f"max deviation {dev.max().item():.3e} at {bad.nonzero()[:5].tolist()}"


def t64(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def objective(temp=0.05, hnw=0.0, **kw):
    return MixCSEObjective(ModelArguments(temp=temp, hard_negative_weight=hnw), MixCSEArguments(**kw), None)


def golden_logits(case, u, v, **kw):
    """The float64 path: the A block (as in base.infonce_logits, without its fp32 cast) + the mixed blocks."""
    p = case["params"]
    a_block = cosine_matrix(u, v) / p["temp"]
    blocks = mixed_negative_blocks(u, v, p["lambdas"], p["temp"], p["hard_negative_weight"], **kw)
    assert all(b.dtype == torch.float64 for b in blocks)
    return torch.cat([a_block, *blocks], dim=1)


def test_golden_file_has_the_three_cases():
    assert [c["name"] for c in load_golden("mixcse")["cases"]] == CASES


@pytest.mark.parametrize("name", CASES)
def test_golden_mixtures_are_detached(name):
    case = golden_case("mixcse", name)
    u, v = t64(case["inputs"]["u"], True), t64(case["inputs"]["v"], True)
    lam = case["params"]["lambdas"]
    m, n = mix_embeddings(v, lam), mix_embeddings(u, lam)
    assert_close64(m, case["expected"]["mix_v"])
    assert_close64(n, case["expected"]["mix_u"])
    assert m.requires_grad is case["expected"]["mix_v_requires_grad"] is False
    assert n.requires_grad is case["expected"]["mix_u_requires_grad"] is False


@pytest.mark.parametrize("name", CASES)
def test_golden_logits_loss_and_gradients(name):
    case = golden_case("mixcse", name)
    p, exp = case["params"], case["expected"]
    u, v = t64(case["inputs"]["u"], True), t64(case["inputs"]["v"], True)
    logits = golden_logits(case, u, v)
    assert logits.shape == (p["B"], 3 * p["B"])
    assert_close64(logits.detach(), exp["logits"])
    zeroed = torch.tensor(exp["zeroed_positions"])
    assert (logits.detach()[zeroed[:, 0], zeroed[:, 1]] == 0.0).all()
    loss = infonce_loss(logits)
    assert_close64(loss.detach(), exp["loss"])
    gu, gv = torch.autograd.grad(loss, [u, v])
    assert_close64(gu, exp["grad_u"])
    assert_close64(gv, exp["grad_v"])
    # The from_spec contrast a faithful implementation must NOT match: with non-detached mixtures
    # gradient would flow through m and n as well.
    assert (gu - t64(exp["grad_u_if_mixtures_not_detached"])).abs().max() > 1e-6
    assert (gv - t64(exp["grad_v_if_mixtures_not_detached"])).abs().max() > 1e-6


@pytest.mark.parametrize("name", CASES)
def test_golden_neginf_variant(name):
    case = golden_case("mixcse", name)
    exp = case["expected"]
    u, v = t64(case["inputs"]["u"]), t64(case["inputs"]["v"])
    logits = golden_logits(case, u, v, mask_fill="neginf")
    zeroed = torch.tensor(exp["zeroed_positions"])
    assert torch.isneginf(logits[zeroed[:, 0], zeroed[:, 1]]).all()
    assert torch.isfinite(logits).sum() == logits.numel() - len(zeroed)
    loss = infonce_loss(logits)
    assert_close64(loss, exp["loss_if_masked_with_neginf"])
    if case["params"]["temp"] == 1.0:  # at temp 0.05 the two variants differ by only ~2.6e-6
        assert abs(loss.item() - exp["loss"]) > 0.05


@pytest.mark.parametrize("name", CASES)
def test_golden_through_the_objective_fp32(name):
    """The objective's own path (fp32, gathered views, hard_negative_weight from ModelArguments)."""
    case = golden_case("mixcse", name)
    p, exp = case["params"], case["expected"]
    u = torch.tensor(case["inputs"]["u"], dtype=torch.float32, requires_grad=True)
    v = torch.tensor(case["inputs"]["v"], dtype=torch.float32, requires_grad=True)
    obj = objective(p["temp"], p["hard_negative_weight"], lambdas=p["lambdas"])
    z = torch.stack([u, v], dim=1)
    out = obj(EncodedViews(pooled=z, local=z, gathered=z), {}, None)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(exp["loss"], rel=1e-5, abs=1e-5)
    gu, gv = torch.autograd.grad(out.loss, [u, v])
    torch.testing.assert_close(gu.double(), t64(exp["grad_u"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gv.double(), t64(exp["grad_v"]), rtol=1e-4, atol=1e-5)
    logits = t64(exp["logits"])
    B = p["B"]
    rows = torch.arange(B)
    assert out.logs["mix/pos_logit"].item() == pytest.approx(logits[rows, rows].mean().item(), rel=1e-5)
    own = torch.cat([logits[rows, B + rows], logits[rows, 2 * B + rows]])
    assert out.logs["mix/mixed_logit"].item() == pytest.approx(own.mean().item(), rel=1e-5)
    # The original's neg_scores: (sum - pos - mixed) / ((3B - 3) * B), masked zeros included.
    neg = (logits.sum() - logits[rows, rows].sum() - own.sum()) / ((3 * B - 3) * B)
    assert out.logs["mix/neg_logit"].item() == pytest.approx(neg.item(), rel=1e-4, abs=1e-5)
    cos = logits[:, :B] * p["temp"]
    assert out.logs["sim/pos"].item() == pytest.approx(cos.diagonal().mean().item(), rel=1e-5)
    assert out.logs["sim/neg"].item() == pytest.approx(((cos.sum() - cos.diagonal().sum()) / (B * B - B)).item(), rel=1e-4, abs=1e-6)
    assert all(not t.requires_grad and t.dim() == 0 for t in out.logs.values())


def test_masked_index_pattern_b4():
    """Spec §3: block C zeroes (0,3),(1,0),(2,1),(3,2); block D zeroes (0,1),(1,2),(2,3),(3,0)."""
    c_mask, d_mask = mixed_mask_positions(4)
    assert sorted(map(tuple, c_mask.nonzero().tolist())) == [(0, 3), (1, 0), (2, 1), (3, 2)]
    assert sorted(map(tuple, d_mask.nonzero().tolist())) == [(0, 1), (1, 2), (2, 3), (3, 0)]
    torch.manual_seed(0)
    u, v = torch.randn(4, 6), torch.randn(4, 6)
    c_block, d_block = mixed_negative_blocks(u, v, 0.2, 0.05)
    assert sorted(map(tuple, (c_block == 0).nonzero().tolist())) == [(0, 3), (1, 0), (2, 1), (3, 2)]
    assert sorted(map(tuple, (d_block == 0).nonzero().tolist())) == [(0, 1), (1, 2), (2, 3), (3, 0)]


def test_hand_checkable_b2():
    """B = 2, H = 2, lam = 0.5: m_0 = m_1 = n_0 = n_1 = the mean vectors; check every entry by hand."""
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    c_block, d_block = mixed_negative_blocks(u, v, 0.5, 1.0, hard_negative_weight=0.25)
    # m_0 = m_1 = (1, 0.5); n_0 = n_1 = (0.5, 0.5).
    cm = 1 / math.sqrt(1.25)
    # C: cos(u_0, m) = 1/sqrt(1.25), cos(u_1, m) = 0.5/sqrt(1.25); masked (0,1), (1,0); +0.25 at (i,i).
    torch.testing.assert_close(c_block, torch.tensor([[cm + 0.25, 0.0], [0.0, 0.5 * cm + 0.25]]))
    # D: cos(n, v_0) = 1/sqrt(2), cos(n, v_1) = 1; masked (0,1), (1,0).
    torch.testing.assert_close(d_block, torch.tensor([[1 / math.sqrt(2) + 0.25, 0.0], [0.0, 1.0 + 0.25]]))


def test_gradients_flow_only_through_u_in_c_and_v_in_d():
    torch.manual_seed(1)
    u = torch.randn(5, 7, requires_grad=True)
    v = torch.randn(5, 7, requires_grad=True)
    c_block, d_block = mixed_negative_blocks(u, v, 0.3, 0.05)
    gu, gv = torch.autograd.grad(c_block.sum(), [u, v], allow_unused=True)
    assert gu is not None and gu.abs().sum() > 0 and (gv is None or gv.abs().sum() == 0)
    gu, gv = torch.autograd.grad(d_block.sum(), [u, v], allow_unused=True)
    assert gv is not None and gv.abs().sum() > 0 and (gu is None or gu.abs().sum() == 0)
    # Masked entries carry no gradient (multiplied by 0 in the original).
    c_mask, _ = mixed_mask_positions(5)
    c_block, _ = mixed_negative_blocks(u, v, 0.3, 0.05)
    (gu,) = torch.autograd.grad((c_block * c_mask).sum(), [u])
    assert gu.abs().sum() == 0


def test_lambda_one_puts_the_positive_on_the_own_mixture_and_zero_duplicates_negatives():
    torch.manual_seed(2)
    u, v = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    a_block = cosine_matrix(u, v) / 0.05
    c_block, d_block = mixed_negative_blocks(u, v, 1.0, 0.05)
    torch.testing.assert_close(c_block.diagonal(), a_block.diagonal())  # m_i = v_i
    c_block, _ = mixed_negative_blocks(u, v, 0.0, 0.05)
    torch.testing.assert_close(c_block.diagonal(), torch.roll(a_block, -1, dims=1).diagonal())  # m_i = v_{i+1}


def test_per_sample_lambdas_and_normalize():
    torch.manual_seed(3)
    x = torch.randn(4, 3) * torch.tensor([[1.0], [10.0], [0.1], [3.0]])
    lam = torch.tensor([0.0, 0.5, 1.0, 0.2])
    m = mix_embeddings(x, lam)
    for j in range(4):
        torch.testing.assert_close(m[j], lam[j] * x[j] + (1 - lam[j]) * x[(j + 1) % 4])
    xn = F.normalize(x, dim=-1)
    mn = mix_embeddings(x, 0.2, normalize=True)
    torch.testing.assert_close(mn, 0.2 * xn + 0.8 * torch.roll(xn, -1, 0))


def test_paper_mode_one_column_per_anchor():
    torch.manual_seed(4)
    u, v = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5)
    (col,) = mixed_negative_blocks(u, v, 0.2, 0.05, hard_negative_weight=0.5, mode="paper")
    assert col.shape == (6, 1)
    m = 0.2 * v + 0.8 * torch.roll(v, -1, 0)
    torch.testing.assert_close(col[:, 0], F.cosine_similarity(u, m, dim=-1) / 0.05 + 0.5)
    obj = objective(mixcse_mode="paper")
    z = torch.stack([u, v], dim=1)
    out = obj(EncodedViews(z, z, z), {}, None)
    logits = obj.logits(u, v)
    assert logits.shape == (6, 7)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, torch.arange(6)))
    torch.testing.assert_close(out.logs["mix/mixed_logit"], logits[:, 6].mean())


def test_blocks_are_the_columns_after_any_objectives_logits():
    """Composability: an objective's own logits with the blocks appended equal mixcse's widened matrix."""
    torch.manual_seed(5)
    u, v = torch.randn(8, 16), torch.randn(8, 16)
    obj = objective(temp=0.05, lambdas=0.2)
    combined = torch.cat([infonce_logits(u, v, 0.05), *mixed_negative_blocks(u, v, 0.2, 0.05)], dim=1)
    torch.testing.assert_close(combined, obj.logits(u, v))
    # With another objective's extra block (e.g. ClusterNS's [S | T]) the blocks just follow it.
    t_block = torch.randn(8, 8)
    widened = torch.cat([infonce_logits(u, v, 0.05), t_block, *mixed_negative_blocks(u, v, 0.2, 0.05)], dim=1)
    torch.testing.assert_close(widened[:, 16:], obj.logits(u, v)[:, 8:])


def test_third_view_hard_negative_block_comes_first():
    torch.manual_seed(6)
    z = torch.randn(4, 3, 8)
    obj = objective(hnw=1.0)
    logits = obj.logits(z[:, 0], z[:, 1], z[:, 2])
    assert logits.shape == (4, 16)
    torch.testing.assert_close(logits[:, :8], infonce_logits(z[:, 0], z[:, 1], 0.05, z[:, 2], 1.0))
    torch.testing.assert_close(logits[:, 8:], torch.cat(mixed_negative_blocks(z[:, 0], z[:, 1], 0.2, 0.05, 1.0), 1))
    out = obj(EncodedViews(z, z, z), {}, None)
    torch.testing.assert_close(out.logs["mix/mixed_logit"], torch.cat([logits[:, 8:12].diagonal(), logits[:, 12:].diagonal()]).mean())


def test_low_precision_inputs_give_fp32_logits():
    torch.manual_seed(7)
    u, v = torch.randn(4, 8).bfloat16(), torch.randn(4, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16), fp32_region("cpu"):  # the trainer's precision boundary
        blocks = mixed_negative_blocks(u, v, 0.2, 0.05)
        logits = objective().logits(u, v)
    assert all(b.dtype == torch.float32 for b in blocks) and logits.dtype == torch.float32


def test_neginf_objective_loss_is_finite_and_logs_skip_masked():
    torch.manual_seed(8)
    z = torch.randn(5, 2, 8, requires_grad=True)
    obj = objective(mask_fill="-inf")
    assert obj.mask_fill == "neginf"
    out = obj(EncodedViews(z, z, z), {}, None)
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(t) for t in out.logs.values())
    out.loss.backward()
    assert torch.isfinite(z.grad).all()


def test_batch_of_one_explains_itself():
    z = torch.randn(1, 2, 8)
    with pytest.raises(ValueError, match="at least 2 sentences") as err:
        objective()(EncodedViews(z, z, z), {}, None)
    assert "dataloader_drop_last" in str(err.value)
    with pytest.raises(ValueError, match="at least 2 sentences"):
        mixed_negative_blocks(z[:, 0], z[:, 1], 0.2, 0.05)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_lambdas_outside_unit_interval_is_an_error_naming_the_flag(bad):
    with pytest.raises(ValueError, match="--lambdas"):
        MixCSEArguments(lambdas=bad)


def test_bad_switch_values():
    with pytest.raises(ValueError, match="--mixcse_mode"):
        MixCSEArguments(mixcse_mode="both")
    with pytest.raises(ValueError, match="--mask_fill"):
        MixCSEArguments(mask_fill="nan")
    for spelling in ("zero", "neginf", "-inf", "NegInf"):
        assert MixCSEArguments(mask_fill=spelling).mask_fill in ("zero", "neginf")


def test_registry_and_cli_flags():
    from transformers import HfArgumentParser

    assert get_objective_class("mixcse") is MixCSEObjective
    assert MixCSEArguments in objective_argument_classes()
    parser = HfArgumentParser([MixCSEArguments])
    (args,) = parser.parse_args_into_dataclasses(["--lambdas", "0.3", "--mixcse_mode", "paper", "--mask_fill=-inf", "--mix_normalize"])
    assert (args.lambdas, args.mixcse_mode, args.mask_fill, args.mix_normalize) == (0.3, "paper", "neginf", True)
    (args,) = parser.parse_args_into_dataclasses(["--lambda", "0.3"])  # the deleted sup script's spelling
    assert args.lambdas == 0.3
    (args,) = parser.parse_args_into_dataclasses([])
    assert (args.lambdas, args.mixcse_mode, args.mask_fill, args.mix_normalize) == (0.2, "repo", "zero", False)
    with pytest.raises(ValueError, match="--lambdas"):
        parser.parse_args_into_dataclasses(["--lambdas", "2"])
    for f in __import__("dataclasses").fields(MixCSEArguments):
        assert f.metadata.get("help")


def test_logs_have_no_host_sync_and_match_definition():
    torch.manual_seed(9)
    logits = torch.randn(3, 9)
    logs = mix_logit_logs(logits, 3, 3, "repo")
    r = torch.arange(3)
    own = torch.zeros(3, 9, dtype=torch.bool)
    own[r, 3 + r] = True
    own[r, 6 + r] = True
    pos = torch.zeros(3, 9, dtype=torch.bool)
    pos[r, r] = True
    torch.testing.assert_close(logs["mix/pos_logit"], logits[pos].mean())
    torch.testing.assert_close(logs["mix/mixed_logit"], logits[own].mean())
    torch.testing.assert_close(logs["mix/neg_logit"], logits[~own & ~pos].mean())


def test_objective_state_dict_is_empty():
    assert objective().state_dict() == {}
