"""DiffCSE objective on tiny real models: generator frozen and outside the state, the discriminator splice on
BERT and RoBERTa, gradient paths, switches, bad input."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

from conftest import build_tiny_bert, build_tiny_roberta
from clusterns.training.data import ContrastiveCollator
from clusterns.modeling.encoder import EncoderConfig, SentenceEncoder
from clusterns.training.model import ContrastiveModel
from clusterns.objectives import get_objective_class
from clusterns.objectives.diffcse.objective import (
    DiffCSEArguments,
    DiffCSEObjective,
    check_data_arguments,
    generator_replacement,
    rtd_inputs,
    rtd_loss,
    rtd_loss_normaliser,
    rtd_loss_sum,
    rtd_metrics,
    rtd_prediction_metrics,
)

SENTENCES = [
    "a man is playing a guitar .",
    "two dogs run in the street with a ball .",
    "the woman is slicing an onion .",
    "children are dancing .",
    "a group of people sitting on a bus .",
    "a black cat is eating food on the table .",
]


def build_generator(encoder_dir: Path, out: Path, seed: int = 1) -> Path:
    """A tiny masked LM sharing the encoder's tokenizer (BertForMaskedLM / RobertaForMaskedLM)."""
    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(str(encoder_dir))
    cfg = AutoConfig.from_pretrained(str(encoder_dir))
    cfg.num_hidden_layers = 1
    torch.manual_seed(seed)
    AutoModelForMaskedLM.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Dropout-free tiny BERT and RoBERTa (deterministic forwards) with their generators."""
    root = tmp_path_factory.mktemp("diffcse-models")
    out = {}
    for kind, builder in (("bert", build_tiny_bert), ("roberta", build_tiny_roberta)):
        enc = builder(root / kind, hidden_dropout=0.0)
        out[kind] = (enc, build_generator(enc, root / f"{kind}-gen"))
    return out


def make(models, kind="bert", projector="bn_mlp", **kw):
    enc_dir, gen_dir = models[kind]
    encoder = SentenceEncoder.from_backbone(str(enc_dir), EncoderConfig(pooler_type="cls", projector=projector, mlp_only_train=True))
    args = DiffCSEArguments(generator_name=str(gen_dir), batchnorm=projector == "bn_mlp", **kw)
    model_args = SimpleNamespace(temp=0.05, hard_negative_weight=0.0, trust_pickle=False, cache_dir=None)
    objective = DiffCSEObjective(model_args, args, encoder)
    return ContrastiveModel(encoder, objective).train()


def collate(model, sentences=SENTENCES, views=2, seed=0):
    tok = model.encoder.tokenizer
    collator = ContrastiveCollator(tok.pad_token_id, num_views=views, batch_transform=model.objective.batch_transform(tok))
    feats = [{"sent0_ids": tok(s)["input_ids"], **({"hard_neg_ids": tok(s[::-1])["input_ids"]} if views == 3 else {})} for s in sentences]
    torch.manual_seed(seed)
    return collator(feats)


def test_registered():
    assert get_objective_class("diffcse") is DiffCSEObjective
    assert DiffCSEObjective.arguments_class is DiffCSEArguments


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_construction_generator_frozen_and_outside_state(models, kind):
    model = make(models, kind)
    obj = model.objective
    gen = obj.generator
    assert all(not p.requires_grad for p in gen.parameters())
    state = obj.state_dict()
    assert state and all(k.startswith(("discriminator.backbone.", "rtd_head.")) for k in state)
    gen_ids = {id(p) for p in gen.parameters()}
    assert not gen_ids & {id(p) for p in model.parameters()}  # not seen by the optimizer
    # The discriminator is a separate copy of the encoder's initial (pretrained) weights, without pooler.
    enc_state = model.encoder.backbone.state_dict()
    disc_state = obj.discriminator.backbone.state_dict()
    assert set(enc_state) == set(disc_state)
    assert all(torch.equal(enc_state[k], disc_state[k]) for k in enc_state)
    assert obj.discriminator.backbone.embeddings.word_embeddings.weight is not model.encoder.backbone.embeddings.word_embeddings.weight
    H = model.encoder.hidden_size
    assert obj.rtd_head.weight.shape == (2, H)  # from the config, not 768
    # CLS id from the tokenizer (tiny BERT: [CLS] = 2, tiny RoBERTa: <s> = 0), never a hard-coded 101.
    tok = model.encoder.tokenizer
    assert obj.cls_token_id == tok.cls_token_id == (2 if kind == "bert" else 0)


def test_objective_state_round_trips_through_safetensors(models, tmp_path):
    model = make(models)
    batch = collate(model)
    model(**batch)["loss"].backward()
    with torch.no_grad():
        for p in model.objective.parameters():
            p.add_(0.01)
    file = tmp_path / "objective.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.objective.state_dict().items()}, str(file))
    fresh = make(models)
    fresh.objective.load_state_dict(load_file(str(file)))
    for (k, a), (_, b) in zip(model.objective.state_dict().items(), fresh.objective.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_splice_is_what_the_first_layer_receives(models, kind):
    model = make(models, kind).eval()
    disc = model.objective.discriminator
    tok = model.encoder.tokenizer
    enc = tok(SENTENCES[:3], padding=True, return_tensors="pt")
    cls_input = torch.randn(3, model.encoder.hidden_size, requires_grad=True)
    seen = {}
    layer0 = disc.backbone.encoder.layer[0]
    def capture(module, args, kwargs):
        seen["h"] = args[0] if args else kwargs["hidden_states"]

    handle = layer0.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        disc(enc["input_ids"], enc["attention_mask"], cls_input)
    finally:
        handle.remove()
    plain = disc.backbone.embeddings(input_ids=enc["input_ids"])  # no cls_input set: the hook passes through
    h = seen["h"]
    assert torch.equal(h[:, 0], cls_input)  # no position embedding, no LayerNorm, no dropout on the vector
    assert torch.allclose(h[:, 1:], plain[:, 1:])
    assert not torch.allclose(plain[:, 0], cls_input)
    # The conditioning changes the discriminator's output everywhere (attention), and is differentiable.
    out = disc(enc["input_ids"], enc["attention_mask"], cls_input)
    out2 = disc(enc["input_ids"], enc["attention_mask"], cls_input.detach() + 1.0)
    assert not torch.allclose(out[:, 1:], out2[:, 1:])
    out.sum().backward()
    assert cls_input.grad is not None and cls_input.grad.abs().sum() > 0


def grads(model, batch, lambda_weight):
    model.zero_grad(set_to_none=True)
    model.objective.lambda_weight = lambda_weight
    model(**batch)["loss"].backward()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("before_mlp", [False, True])
def test_rtd_gradient_reaches_encoder_not_generator(models, kind, before_mlp):
    model = make(models, kind, generator_dropout=False, before_mlp=before_mlp)
    batch = collate(model)
    g0 = grads(model, batch, 0.0)
    g1 = grads(model, batch, 1.0)  # dropout-free models, fixed batch: g1 - g0 is the RTD gradient

    def rtd_part(name):
        return (g1[name] - g0[name]).abs().sum().item()

    enc_names = [n for n in g1 if n.startswith("encoder.backbone.encoder.layer.")]
    assert max(rtd_part(n) for n in enc_names) > 0  # RTD -> sentence vector -> encoder
    proj_names = [n for n in g1 if n.startswith("encoder.projector.") and g1[n] is not None]
    rtd_on_projector = max(rtd_part(n) for n in proj_names)
    assert (rtd_on_projector == 0) if before_mlp else (rtd_on_projector > 0)
    assert all(g1[n] is not None for n in g1 if n.startswith(("objective.discriminator.backbone.encoder", "objective.rtd_head")))
    assert all(p.grad is None for p in model.objective.generator.parameters())


def rtd_gradient(model, batch, views, through, before_mlp=False):
    """d(lambda * RTD)/d `through` (views.local or views.pooled): the gradient of the loss with lambda 1 minus
    the one with lambda 0 (the InfoNCE part), with the discriminator's dropout drawn the same way both times."""
    obj = model.objective
    obj.args.cond_source = "pre_projector" if before_mlp else "post_projector"
    grads = []
    for weight in (1.0, 0.0):
        obj.lambda_weight = weight
        torch.manual_seed(0)
        out = obj(views, dict(batch), model.encoder)
        (grad,) = torch.autograd.grad(out.loss, through, retain_graph=True, allow_unused=True)
        grads.append(torch.zeros_like(through) if grad is None else grad)
    return grads[0] - grads[1]


def test_sentence_vector_gets_rtd_gradient(models):
    """The conditioning vector is not detached: the RTD loss alone has a gradient on the projected sentence
    vector of every view (and, with --before_mlp, on the pooler output), and none on the other one."""
    model = make(models, generator_dropout=False)
    batch = collate(model)
    views = model.encode_views(batch["input_ids"], batch["attention_mask"])
    grad = rtd_gradient(model, batch, views, views.local)
    assert (grad.abs().sum(-1) > 0).all(), "every view's sentence vector must get an RTD gradient"
    before = rtd_gradient(model, batch, views, views.pooled, before_mlp=True)
    assert (before.abs().sum(-1) > 0).all()
    # conditioned on the pooler output, the projected vector gets only the InfoNCE gradient
    assert rtd_gradient(model, batch, views, views.local, before_mlp=True).abs().max() == 0


def test_logs_and_loss(models):
    model = make(models, lambda_weight=0.005)
    batch = collate(model)
    out = model(**batch)
    logs = out["logs"]
    for key in ("rtd/loss", "rtd/acc", "rtd/replaced_recall", "rtd/original_acc", "sim/pos", "sim/neg", "contrastive/loss"):
        assert key in logs and logs[key].dim() == 0 and not logs[key].requires_grad
    assert torch.allclose(out["loss"], logs["contrastive/loss"] + 0.005 * logs["rtd/loss"])
    assert 0 <= logs["rtd/acc"] <= 1 and logs["rtd/replaced_frac"] > 0


def test_hard_negative_column_three_views(models):
    model = make(models)
    batch = collate(model, views=3)
    assert batch["mlm_input_ids"].shape == batch["input_ids"].shape and batch["input_ids"].shape[1] == 3
    out = model(**batch)
    assert torch.isfinite(out["loss"])


def test_generator_dropout_switch(models):
    on = make(models)
    on(**collate(on))
    assert on.objective.generator.training
    off = make(models, generator_dropout=False)
    off(**collate(off))
    assert not off.objective.generator.training


def test_rtd_reductions_on_a_hand_case():
    # 1 sentence x 2 views, L = 3, last position of view 2 is padding.
    attn = torch.tensor([[1, 1, 1], [1, 1, 0]])
    labels = torch.tensor([[0, 1, 0], [0, 0, 0]])
    logits = torch.zeros(2, 3, 2)
    logits[1, 2] = torch.tensor([0.0, math.log(3.0)])  # the pad position: CE = log 4 for label 0
    ce_pad = math.log(4.0)
    all_pos = (5 * math.log(2.0) + ce_pad) / 6
    assert rtd_loss(logits, labels, attn, "all_positions").item() == pytest.approx(all_pos)
    assert rtd_loss(logits, labels, attn, "exclude_padding").item() == pytest.approx(math.log(2.0))
    assert rtd_loss(logits, labels, attn, "sum_over_views", num_views=2).item() == pytest.approx(
        3 * math.log(2.0) / 3 + (2 * math.log(2.0) + ce_pad) / 3
    )
    m = rtd_metrics(torch.tensor([[[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]]), torch.tensor([[1, 0, 0]]), torch.tensor([[1, 1, 1]]))
    assert m["rtd/acc"].item() == pytest.approx(2 / 3)
    assert m["rtd/replaced_recall"].item() == 1.0
    assert m["rtd/original_acc"].item() == 0.5


@pytest.mark.parametrize("reduction", ["all_positions", "exclude_padding", "sum_over_views"])
def test_rtd_loss_is_the_chunks_sums_over_the_batch_normaliser(reduction):
    """--mini_batch_size computes the RTD loss as its chunks' rtd_loss_sum over the whole batch's normaliser: the
    same number as rtd_loss on the whole batch (here 3 sentences x 2 views in chunks of 2 rows + 4 rows)."""
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 5, 2, dtype=torch.float64), torch.randint(0, 2, (6, 5))
    attn = torch.ones(6, 5, dtype=torch.long)
    attn[1, 3:], attn[4, 2:] = 0, 0
    whole = rtd_loss(logits, labels, attn, reduction, num_views=2)
    chunks = sum(rtd_loss_sum(logits[rows], labels[rows], attn[rows], reduction) for rows in (slice(0, 2), slice(2, 6)))
    torch.testing.assert_close(chunks / rtd_loss_normaliser(attn, reduction, num_views=2), whole, rtol=1e-12, atol=0)
    hand = {"all_positions": 30.0, "exclude_padding": 30.0 - 2 - 3, "sum_over_views": 15.0}  # N*L, real tokens, N*L/V
    assert rtd_loss_normaliser(attn, reduction, num_views=2).item() == hand[reduction]


def test_rtd_metrics_of_predictions_equal_those_of_the_logits():
    logits = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])
    labels, attn = torch.tensor([[1, 0, 0]]), torch.tensor([[1, 1, 1]])
    assert rtd_prediction_metrics(torch.tensor([[1, 1, 0]]), labels, attn) == rtd_metrics(logits, labels, attn)


def test_rtd_inputs_hand_case():
    ids = torch.tensor([[7, 5, 6, 8, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 0]])
    g = torch.tensor([[9, 5, 4, 9, 3]])
    disc, rep = rtd_inputs(g, ids, attn, cls_token_id=7)
    assert disc.tolist() == [[7, 5, 4, 9, 0]]
    assert rep.tolist() == [[0, 0, 1, 1, 0]]  # a replaced final special token counts


def test_generator_replacement_modes():
    logits = torch.full((2, 4, 6), -30.0)
    logits[..., 3] = 30.0
    assert (generator_replacement(logits, "argmax") == 3).all()
    assert (generator_replacement(logits, "sample") == 3).all()
    flat = torch.zeros(4000, 5)
    torch.manual_seed(0)
    s = generator_replacement(flat, "sample")
    counts = torch.bincount(s, minlength=5).float() / 4000
    assert (counts - 0.2).abs().max() < 0.03
    # Padded generator vocabularies never produce ids the discriminator cannot embed.
    wide = torch.zeros(3, 10)
    wide[:, 9] = 5.0
    assert (generator_replacement(wide, "argmax", vocab_limit=8) < 8).all()


def test_sample_mode_trains(models):
    model = make(models, generator_replace="sample")
    out = model(**collate(model))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


# ---- bad input ---------------------------------------------------------------------------------------


def test_missing_generator_name(models):
    enc_dir, _ = models["bert"]
    encoder = SentenceEncoder.from_backbone(str(enc_dir), EncoderConfig(pooler_type="cls", projector="bn_mlp"))
    with pytest.raises(ValueError, match="--generator_name is required"):
        DiffCSEObjective(SimpleNamespace(temp=0.05, hard_negative_weight=0.0), DiffCSEArguments(), encoder)


def test_generator_with_another_vocabulary(models):
    enc_dir, _ = models["bert"]
    _, roberta_gen = models["roberta"]
    encoder = SentenceEncoder.from_backbone(str(enc_dir), EncoderConfig(pooler_type="cls", projector="bn_mlp"))
    with pytest.raises(ValueError, match="does not share the encoder's vocabulary"):
        DiffCSEObjective(
            SimpleNamespace(temp=0.05, hard_negative_weight=0.0, trust_pickle=False, cache_dir=None),
            DiffCSEArguments(generator_name=str(roberta_gen)),
            encoder,
        )


def test_generator_with_same_size_but_permuted_vocabulary(models, tmp_path):
    enc_dir, gen_dir = models["bert"]
    vocab = (Path(enc_dir) / "vocab.txt").read_text().split("\n")
    words = [i for i, w in enumerate(vocab) if w and not w.startswith("[")]
    vocab[words[0]], vocab[words[1]] = vocab[words[1]], vocab[words[0]]
    other = tmp_path / "gen"
    AutoModelForMaskedLM.from_pretrained(str(gen_dir)).save_pretrained(other)
    (other / "vocab.txt").write_text("\n".join(vocab))
    from transformers import BertTokenizerFast

    BertTokenizerFast.from_pretrained(str(other), do_lower_case=True).save_pretrained(other)
    encoder = SentenceEncoder.from_backbone(str(enc_dir), EncoderConfig(pooler_type="cls", projector="bn_mlp"))
    with pytest.raises(ValueError, match="2 tokens have other ids"):
        DiffCSEObjective(
            SimpleNamespace(temp=0.05, hard_negative_weight=0.0, trust_pickle=False, cache_dir=None),
            DiffCSEArguments(generator_name=str(other)),
            encoder,
        )


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.3])
def test_masking_ratio_outside_open_interval(ratio):
    with pytest.raises(ValueError, match="--masking_ratio"):
        DiffCSEArguments(generator_name="g", masking_ratio=ratio)


@pytest.mark.parametrize("field,value", [("generator_replace", "greedy"), ("rtd_reduction", "sum"), ("masking_scheme", "span")])
def test_bad_switch_values(field, value):
    with pytest.raises(ValueError, match=f"--{field}"):
        DiffCSEArguments(generator_name="g", **{field: value})


def test_pad_to_max_length_refused():
    with pytest.raises(ValueError, match="--pad_to_max_length"):
        check_data_arguments(SimpleNamespace(pad_to_max_length=True))
    check_data_arguments(SimpleNamespace(pad_to_max_length=False))


def test_batch_without_mlm_input_ids(models):
    model = make(models)
    batch = collate(model)
    del batch["mlm_input_ids"]
    with pytest.raises(ValueError, match="mlm_input_ids"):
        model(**batch)


def test_batchnorm_conflicting_projector(models):
    enc_dir, gen_dir = models["bert"]
    encoder = SentenceEncoder.from_backbone(str(enc_dir), EncoderConfig(pooler_type="cls", projector="simcse_mlp"))
    with pytest.raises(ValueError, match="--batchnorm"):
        DiffCSEObjective(
            SimpleNamespace(temp=0.05, hard_negative_weight=0.0, trust_pickle=False, cache_dir=None),
            DiffCSEArguments(generator_name=str(gen_dir), batchnorm=True),
            encoder,
        )


def test_runs_under_bf16_autocast(models):
    """--bf16: the generator and discriminator run in mixed precision, the losses come out in fp32."""
    model = make(models)
    assert model.objective.runs_subnetworks_in_autocast
    batch = collate(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert out["logs"]["rtd/loss"].dtype == torch.float32
    out["loss"].backward()
    assert model.objective.rtd_head.weight.grad is not None
