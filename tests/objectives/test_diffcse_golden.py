"""DiffCSE against the golden vectors of the original code (/work/shared/golden/diffcse.json, float64).

Tolerance (golden/README.md): |got - exp| <= 1e-9 + 1e-6 |exp| for floats, exact for ids and labels."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from conftest import golden_case
from clusterns.objectives.base import EncodedViews
from clusterns.objectives.functional import infonce_logits, infonce_loss
from clusterns.objectives.diffcse.objective import DiffCSEArguments, DiffCSEObjective, rtd_inputs, rtd_loss, rtd_metrics, splice_cls_input

D = torch.float64


def t(x, dtype=D):
    return torch.tensor(x, dtype=dtype)


# The shared InfoNCE in base.py computes its logits in fp32 (`.float()`), also for fp64 inputs; values
# that pass through it then carry fp32 rounding (~1e-7 relative on logits up to ~20). They are checked
# at the fp32 tolerance of golden/README.md unless base.py keeps fp64 inputs in fp64.
INFONCE_IN_FP64 = infonce_logits(torch.zeros(2, 2, dtype=D) + 1, torch.ones(2, 2, dtype=D), 0.05).dtype == D
STRICT = (1e-9, 1e-6)
THROUGH_INFONCE = STRICT if INFONCE_IN_FP64 else (1e-5, 1e-4)


def assert_close(got, exp, tol=STRICT):
    exp = torch.as_tensor(exp, dtype=D)
    got = torch.as_tensor(got).detach().to(D)
    assert got.shape == exp.shape, (got.shape, exp.shape)
    err = (got - exp).abs()
    bound = tol[0] + tol[1] * exp.abs()
    assert bool((err <= bound).all()), f"max abs err {err.max().item():.3e}"


def bn_projector(case_inputs, hidden: int) -> nn.Module:
    """The lead's BNProjectionMLP (`--projector bn_mlp`), loaded with the golden weights, float64, train mode."""
    from clusterns.modeling.projectors import BNProjectionMLP

    proj = BNProjectionMLP(hidden).to(D).train()
    with torch.no_grad():
        proj.net[0].weight.copy_(t(case_inputs["linear1_weight"]))
        proj.net[1].weight.copy_(t(case_inputs["bn1_weight"]))
        proj.net[1].bias.copy_(t(case_inputs["bn1_bias"]))
        proj.net[3].weight.copy_(t(case_inputs["linear2_weight"]))
    return proj


def test_rtd_labels_and_discriminator_input():
    c = golden_case("diffcse", "diffcse_rtd_labels")
    i, e = c["inputs"], c["expected"]
    disc, replaced = rtd_inputs(
        t(i["generator_argmax_ids"], torch.long), t(i["input_ids"], torch.long), t(i["attention_mask"], torch.long),
        c["params"]["cls_token"],
    )
    assert disc.tolist() == e["discriminator_input_ids"]
    assert replaced.tolist() == e["replaced_labels"]
    assert replaced[3].tolist()[4] == 1  # the replaced [SEP] of row 3 counts


def test_projection_mlp_train_mode():
    c = golden_case("diffcse", "diffcse_projection_mlp_train")
    i, e = c["inputs"], c["expected"]
    proj = bn_projector(i, c["params"]["H"])
    out = proj(t(i["x"]))
    assert_close(out, e["output"])
    assert_close(proj.net[1].running_mean, e["bn1_running_mean_after"])
    assert_close(proj.net[1].running_var, e["bn1_running_var_after"])
    assert_close(proj.net[4].running_mean, e["bn2_running_mean_after"])
    assert_close(proj.net[4].running_var, e["bn2_running_var_after"])
    assert proj.net[4].weight is None and proj.net[0].bias is None and proj.net[3].bias is None


def test_cls_input_splice():
    c = golden_case("diffcse", "diffcse_cls_input_splice")
    i, e = c["inputs"], c["expected"]
    emb = t(i["embedding_output"]).requires_grad_(True)
    cls_in = t(i["cls_input"]).requires_grad_(True)
    out = splice_cls_input(emb, cls_in)
    assert_close(out, e["spliced"])
    out.sum().backward()
    assert torch.equal(cls_in.grad, torch.ones_like(cls_in))  # not detached
    assert emb.grad[:, 0].abs().sum() == 0 and torch.equal(emb.grad[:, 1:], torch.ones_like(emb.grad[:, 1:]))


# ---- the whole objective, with the three networks replaced by stand-ins returning the golden tensors ----


class FixedGenerator(nn.Module):
    """Stands in for the masked LM: logits whose argmax is the golden generator output."""

    def __init__(self, argmax_ids: torch.Tensor, vocab: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, 1)
        self.argmax_ids = argmax_ids
        self.vocab = vocab

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, attention_mask=None):
        logits = torch.nn.functional.one_hot(self.argmax_ids, self.vocab).float()
        return SimpleNamespace(logits=logits)


class FixedHead(nn.Module):
    """Stands in for electra_head(discriminator(...)): the golden rtd_logits, held fixed."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, hidden):
        return self.logits


class StubTokenizer:
    def __init__(self, cls_token_id: int, size: int):
        self.cls_token_id = cls_token_id
        self.size = size

    def __len__(self):
        return self.size


def objective_with_stand_ins(case, projector: str):
    from transformers import BertConfig, BertModel

    p, i = case["params"], case["inputs"]
    vocab = 2600  # the golden ids go up to 2500
    torch.manual_seed(0)
    backbone = BertModel(
        BertConfig(vocab_size=vocab, hidden_size=p["H"], num_hidden_layers=1, num_attention_heads=2, intermediate_size=8),
        add_pooling_layer=False,
    ).to(D)
    tokenizer = StubTokenizer(p["cls_token"], vocab)
    encoder = SimpleNamespace(backbone=backbone, tokenizer=tokenizer, hidden_size=p["H"], config=SimpleNamespace(projector=projector))
    model_args = SimpleNamespace(temp=p["temp"], hard_negative_weight=0.0)
    args = DiffCSEArguments(generator_name="stand-in", lambda_weight=p["lambda_weight"], batchnorm=projector == "bn_mlp")
    gen = FixedGenerator(t(i["generator_argmax_ids"], torch.long), vocab)
    obj = DiffCSEObjective(model_args, args, encoder, generator=gen, generator_tokenizer=None)
    obj.rtd_head = FixedHead(t(i["rtd_logits"]))
    return obj, encoder


def run_objective(obj, encoder, i, pooled, local):
    B = pooled.shape[0] // 2
    H = pooled.shape[1]
    ids = t(i["input_ids"], torch.long)
    attn = t(i["attention_mask"], torch.long)
    views = EncodedViews(pooled=pooled.view(B, 2, H), local=local.view(B, 2, H), gathered=local.view(B, 2, H))
    batch = {"input_ids": ids.view(B, 2, -1), "attention_mask": attn.view(B, 2, -1), "mlm_input_ids": ids.view(B, 2, -1)}
    return obj(views, batch, encoder)


def test_total_loss_with_projector():
    c = golden_case("diffcse", "diffcse_total_loss_projector")
    i, e, p = c["inputs"], c["expected"], c["params"]
    obj, encoder = objective_with_stand_ins(c, "bn_mlp")
    proj = bn_projector(i, p["H"])
    cls_hidden = t(i["cls_hidden"]).requires_grad_(True)
    z = proj(cls_hidden)
    assert_close(z, e["projected"])
    assert_close(z, e["cls_input_to_discriminator"])
    assert_close(z[0::2], e["z1"])
    assert_close(z[1::2], e["z2"])
    assert_close(infonce_logits(z[0::2], z[1::2], p["temp"]), e["cos_logits"], THROUGH_INFONCE)

    # What the objective passes to the discriminator as cls_input: capture it at the splice.
    seen = {}
    original = obj.discriminator.forward

    def spy(input_ids, attention_mask, cls_input, token_type_ids=None):
        seen["cls_input"], seen["input_ids"] = cls_input, input_ids
        return original(input_ids, attention_mask, cls_input, token_type_ids)

    obj.discriminator.forward = spy
    out = run_objective(obj, encoder, i, cls_hidden, z)
    assert_close(seen["cls_input"], e["cls_input_to_discriminator"])
    assert seen["input_ids"][:, 0].tolist() == [p["cls_token"]] * 8
    assert_close(out.logs["rtd/loss"], e["rtd_loss"])
    assert_close(out.logs["contrastive/loss"], e["infonce"], THROUGH_INFONCE)
    assert_close(out.loss, e["loss"], THROUGH_INFONCE)
    assert_close(out.logs["rtd/acc"], e["electra_acc"])
    assert_close(out.logs["rtd/replaced_recall"], e["electra_rep_acc"])
    assert_close(out.logs["rtd/original_acc"], e["electra_fix_acc"])
    assert_close(out.logs["sim/pos"], e["sim_pos_avg"], THROUGH_INFONCE)
    assert_close(out.logs["sim/neg"], e["sim_neg_avg"], THROUGH_INFONCE)
    out.loss.backward()
    assert_close(cls_hidden.grad, e["grad_cls_hidden"], THROUGH_INFONCE)


def test_total_loss_given_z():
    c = golden_case("diffcse", "diffcse_total_loss_given_z")
    i, e = c["inputs"], c["expected"]
    obj, encoder = objective_with_stand_ins(c, "none")
    z = t(i["z_interleaved"]).requires_grad_(True)
    out = run_objective(obj, encoder, i, z, z)
    assert_close(out.logs["contrastive/loss"], e["infonce"], THROUGH_INFONCE)
    assert_close(out.logs["rtd/loss"], e["rtd_loss"])
    assert_close(out.loss, e["loss"], THROUGH_INFONCE)
    out.loss.backward()
    assert_close(z.grad, e["grad_z_interleaved"], THROUGH_INFONCE)


def test_pure_rtd_pieces_on_golden():
    c = golden_case("diffcse", "diffcse_total_loss_given_z")
    i, e, p = c["inputs"], c["expected"], c["params"]
    attn = t(i["attention_mask"], torch.long)
    _, replaced = rtd_inputs(t(i["generator_argmax_ids"], torch.long), t(i["input_ids"], torch.long), attn, p["cls_token"])
    assert replaced.tolist() == e["replaced_labels"]
    logits = t(i["rtd_logits"])
    assert_close(rtd_loss(logits, replaced, attn, "all_positions"), e["rtd_loss"])
    # KoDiffCSE's per-view sum is exactly twice the joint mean (equal B*L per view).
    assert_close(rtd_loss(logits, replaced, attn, "sum_over_views", num_views=2), 2 * e["rtd_loss"])
    # exclude_padding: mean over the 2B*L - #pads real tokens only.
    ce = torch.nn.functional.cross_entropy(logits.view(-1, 2), replaced.view(-1), reduction="none").view(attn.shape)
    assert_close(rtd_loss(logits, replaced, attn, "exclude_padding"), (ce * attn).sum() / attn.sum())
    assert not torch.isclose(rtd_loss(logits, replaced, attn, "exclude_padding"), t(e["rtd_loss"]))
    z = t(i["z_interleaved"])
    assert_close(infonce_loss(infonce_logits(z[0::2], z[1::2], p["temp"])), e["infonce"], THROUGH_INFONCE)
    m = rtd_metrics(logits, replaced, attn)
    assert set(m) >= {"rtd/acc", "rtd/replaced_recall", "rtd/original_acc"}
