"""Packed linear layers (clusterns/packing.py, --packed_linear): same embeddings and gradients as the plain forward."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clusterns.modeling import packing
from clusterns.modeling.poolers import POOLERS
from clusterns.modeling.packing import (
    disable_packed_linear,
    enable_packed_linear,
    is_packed,
    pack_rows,
    packed_batch,
    reading_positions,
    unpack_rows,
)

SENTENCES = [
    "a man is playing a guitar .",
    "two dogs run .",
    "the woman is slicing a tomato on the table with a big knife near the window .",
    "a child .",
    "people are walking on the street in the rain with red and blue umbrellas .",
]


def _argv(model, pooler, extra=()):
    return ["--model_name_or_path", str(model), "--output_dir", "/tmp/unused-packing", "--use_cpu",
            "--pooler_type", pooler, "--dropout_prob", "0.0", "--max_seq_length", "40", *extra]


def _build(model, pooler, packed, extra=()):
    from clusterns.training.run import build_encoder, parse_args
    from clusterns.modeling.prompt import PromptArguments

    flags = ["--packed_linear", "true" if packed else "false"]
    model_args, data_args, by_class, _ = parse_args(_argv(model, pooler, [*extra, *flags]))
    torch.manual_seed(0)
    return build_encoder(model_args, data_args, None, by_class.get(PromptArguments)), model_args


def _batch(encoder, views=1):
    from clusterns.training.data import ContrastiveCollator

    if encoder.config.prompt:
        from clusterns.modeling.prompt import get_spec

        feats = get_spec(encoder).tokenize_function(encoder.tokenizer, 40)({"sent0": SENTENCES})
        features = [{k: feats[k][i] for k in feats} for i in range(len(SENTENCES))]
    else:
        ids = encoder.tokenizer(SENTENCES, truncation=True, max_length=40)["input_ids"]
        features = [{"sent0_ids": x} for x in ids]
    return ContrastiveCollator(pad_token_id=encoder.tokenizer.pad_token_id, num_views=2)(features)


def _pair(model, pooler, extra=()):
    plain, model_args = _build(model, pooler, False, extra)
    packed = copy.deepcopy(plain)
    assert enable_packed_linear(packed.backbone)
    assert not is_packed(plain.backbone) and is_packed(packed.backbone)
    return plain, packed, model_args


def _assert_grads_close(a: nn.Module, b: nn.Module, rtol=1e-4):
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        if pa.grad is None:
            assert pb.grad is None or not pb.grad.abs().any(), name
            continue
        scale = pa.grad.abs().max().clamp_min(1e-6)
        # key biases have a zero true gradient (softmax shift invariance): compare on the parameter scale; the floor
        # covers float32 noise between attention kernels (the CPU flash kernel vs the math path: up to ~2e-6)
        assert (pa.grad - pb.grad).abs().max() <= rtol * scale + 5e-6, (name, float((pa.grad - pb.grad).abs().max()), float(scale))


# ---- the gather / scatter functions ---------------------------------------------------------------
def test_pack_unpack_roundtrip_and_gradcheck():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    state = packed_batch(mask)
    assert state.tokens == 7 and state.batch == 3 and state.length == 4
    assert state.index.tolist() == [0, 1, 4, 5, 6, 7, 8]
    x = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    packed = pack_rows(x, state.index)
    assert torch.equal(packed, x[mask.reshape(-1).bool()])
    full = unpack_rows(packed, state.index, 12)
    assert torch.equal(full[mask.reshape(-1).bool()], packed) and not full[~mask.reshape(-1).bool()].any()
    torch.autograd.gradcheck(lambda t: pack_rows(t, state.index), (x,))
    p = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: unpack_rows(t, state.index, 12), (p,))


def test_round_rows_adds_pad_positions_as_filler_dropped_by_the_scatter():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    state = packed_batch(mask, round_rows=4)  # 7 tokens -> 8 rows: one pad position as filler
    assert state.tokens == 7 and state.index.tolist() == [0, 1, 4, 5, 6, 7, 8, 2]
    assert state.token_index.tolist() == [0, 1, 4, 5, 6, 7, 8]
    x = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    packed = pack_rows(x, state.index)
    assert packed.shape == (8, 3) and torch.equal(packed[7], x[2])
    full = unpack_rows(packed, state.token_index, 12)
    assert torch.equal(full[mask.reshape(-1).bool()], packed[:7]) and not full[~mask.reshape(-1).bool()].any()
    p = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: unpack_rows(t, state.token_index, 12), (p,))
    unpack_rows(p, state.token_index, 12).sum().backward()
    assert p.grad[:7].eq(1).all() and not p.grad[7].any()  # the filler row's output is dropped: zero gradient
    # a multiple already, more filler than pads, jagged attention: the tokens as they are
    assert packed_batch(mask, round_rows=7).index.numel() == 7
    assert packed_batch(mask, round_rows=16).index.numel() == 7  # 9 filler rows needed, 5 pads
    assert packed_batch(mask, jagged=True, round_rows=4).index.numel() == 7
    assert packed_batch(mask, round_rows=12).index.tolist() == [0, 1, 4, 5, 6, 7, 8, 2, 3, 9, 10, 11]


def test_packed_batch_none_without_padding():
    assert packed_batch(torch.ones(2, 5, dtype=torch.long)) is None
    assert packed_batch(torch.zeros(2, 5, dtype=torch.long)) is None
    assert packed_batch(torch.ones(2, 1, 5, 5)) is None  # not a 2-D key-padding mask


# ---- equivalence on BERT and RoBERTa, every pooler ------------------------------------------------
@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_roberta"])
@pytest.mark.parametrize("pooler", [p for p in POOLERS if p != "mask"])
@pytest.mark.parametrize("round_rows", [1, packing.CPU_ROUND_ROWS])
def test_pooled_equal_eval_and_train_with_grads(request, backbone, pooler, round_rows, monkeypatch):
    model = request.getfixturevalue(backbone)
    plain, packed, _ = _pair(model, pooler)
    packed.backbone._clusterns_packing.round_rows = round_rows
    batch = _batch(plain)
    ids, mask = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1]), batch["attention_mask"].reshape(-1, batch["input_ids"].shape[-1])
    assert (mask == 0).any()  # the batch is padded
    tokens = int(mask.sum())
    state = packing.packed_batch(mask, round_rows=round_rows)
    # the default rounding adds filler rows here (so the test covers them); 1 runs the tokens as they are
    expected = tokens if round_rows == 1 else -(-tokens // round_rows) * round_rows
    assert state.index.numel() == expected and (round_rows == 1 or expected > tokens)
    calls = packed.backbone._clusterns_packing.calls
    reads = packed.backbone._clusterns_packing.read_position_calls
    for training in (False, True):
        plain.train(training)
        packed.train(training)
        a = plain(ids, mask)
        b = packed(ids, mask)
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (pooler, training, (a - b).abs().max())
        if training:
            weights = torch.randn_like(a)
            (a * weights).sum().backward()
            (b * weights).sum().backward()
            _assert_grads_close(plain, packed)
    assert packed.backbone._clusterns_packing.calls == calls + 2  # both forwards ran packed
    # the cls poolers read one last-layer state per sentence: the last layer ran for those tokens only
    assert packed.backbone._clusterns_packing.read_position_calls == reads + (2 if pooler.startswith("cls") else 0)
    # without gradients one padded q/k/v buffer serves every layer (a second width for a pruned last layer's k/v)
    plain.eval(), packed.eval()
    states = []
    real = packing.packed_batch
    monkeypatch.setattr(packing, "packed_batch", lambda *a, **k: states.append(real(*a, **k)) or states[-1])
    with torch.no_grad():
        torch.testing.assert_close(packed(ids, mask), plain(ids, mask), atol=1e-5, rtol=1e-5)
    assert len(states) == 1 and len(states[0].padded_buffers) == (2 if pooler.startswith("cls") else 1)
    # eval-mode encode() (length-sorted batches) gives the same vectors
    assert torch.allclose(torch.as_tensor(plain.encode(SENTENCES, batch_size=2)),
                          torch.as_tensor(packed.encode(SENTENCES, batch_size=2)), atol=1e-5)


def test_reading_positions_runs_the_last_layer_for_those_tokens_only(tiny_bert):
    """reading_positions: the last layer's output at the read positions equals the plain forward's (any position, the
    rows in any order of lengths); a read position that is a pad gives zeros, as the packed layers' pads; every other
    position is zeros. A forward asking for its hidden states, or one outside the context, runs every token."""
    plain, packed, _ = _pair(tiny_bert, "avg")
    plain.eval(), packed.eval()
    controller = packed.backbone._clusterns_packing
    ids = plain.tokenizer(SENTENCES, padding=True, return_tensors="pt")["input_ids"]
    mask = (ids != plain.tokenizer.pad_token_id).long()
    mask[1, :2] = 0  # a row whose first tokens are pads (left padding)
    n, length = ids.shape
    expected = plain.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    positions = torch.tensor([0, 0, 5, 2, 1])
    reads = controller.read_position_calls
    with reading_positions(packed.backbone, positions):
        got = packed.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    assert controller.read_position_calls == reads + 1
    rows = torch.arange(n)
    read = got[rows, positions]
    valid = mask[rows, positions].bool()
    assert not valid[1] and valid[[0, 2, 3, 4]].all()
    torch.testing.assert_close(read[valid], expected[rows, positions][valid], atol=1e-5, rtol=1e-5)
    assert not read[~valid].any()
    others = torch.ones(n, length, dtype=torch.bool)
    others[rows, positions] = False
    assert not got[others].any()
    with reading_positions(packed.backbone, positions):  # hidden states asked: every token, nothing taken
        full = packed.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True).last_hidden_state
    torch.testing.assert_close(full[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)
    assert controller.read_position_calls == reads + 1 and controller.read_positions is None
    with pytest.raises(ValueError, match="one per sentence"), reading_positions(packed.backbone, positions[:2]):
        packed.backbone(input_ids=ids, attention_mask=mask)
    with reading_positions(plain.backbone, positions):  # a backbone that is not packed: the plain forward
        torch.testing.assert_close(plain.backbone(input_ids=ids, attention_mask=mask).last_hidden_state, expected)


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_roberta"])
def test_prompt_mask_pooler_with_delta_equal(request, backbone):
    """The mask pooler (PromptBERT, two templates, template denoising): the delta pass has no attention
    mask and runs unpacked, the sentence pass runs packed; pooled vectors and gradients agree."""
    model = request.getfixturevalue(backbone)
    extra = ["--mask_embedding_sentence", "--mask_embedding_sentence_delta", "--prompt_templates", "per_backbone"]
    plain, packed, _ = _pair(model, "mask", extra)
    batch = _batch(plain)
    n, v, length = batch["input_ids"].shape
    ids, mask = batch["input_ids"].reshape(-1, length), batch["attention_mask"].reshape(-1, length)
    reads = packed.backbone._clusterns_packing.read_position_calls
    for training in (False, True):
        plain.train(training)
        packed.train(training)
        a = plain.pooled(ids, mask, num_views=v)
        b = packed.pooled(ids, mask, num_views=v)
        # the mask tokens' last-layer states only (the delta pass has no padding: not packed)
        assert packed.backbone._clusterns_packing.read_position_calls == reads + 1 + training
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (training, (a - b).abs().max())
        if training:
            a.sum().backward()
            b.sum().backward()
            _assert_grads_close(plain, packed)


@pytest.mark.parametrize("objective", ["infonce", "clusterns", "mixcse"])
def test_contrastive_model_loss_and_grads_equal(tiny_bert, objective):
    from clusterns.training.model import ContrastiveModel
    from clusterns.objectives import get_objective_class

    plain, packed, model_args = _pair(tiny_bert, "cls")
    cls = get_objective_class(objective)
    args = cls.arguments_class() if cls.arguments_class else None
    if objective == "clusterns":
        args.kmeans, args.kmean_cosine = 4, 1.0
    models = [ContrastiveModel(enc, cls(model_args, copy.deepcopy(args), enc)).train() for enc in (plain, packed)]
    if objective == "clusterns":  # the same greedy-chain start in both (it is drawn from Python's random otherwise)
        for m in models:
            m.objective.forced_first_index = 0
    batch = _batch(plain)
    for _ in range(2):  # clusterns: the first forward starts the clustering, the second uses it
        outs = [m(**batch) for m in models]
        assert torch.allclose(outs[0]["loss"], outs[1]["loss"], atol=1e-5), (outs[0]["loss"], outs[1]["loss"])
    for out in outs:
        out["loss"].backward()
    _assert_grads_close(models[0], models[1])


def test_bf16_autocast_close(tiny_bert):
    plain, packed, _ = _pair(tiny_bert, "avg")
    batch = _batch(plain)
    ids, mask = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1]), batch["attention_mask"].reshape(-1, batch["input_ids"].shape[-1])
    plain.eval(), packed.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = plain(ids, mask).float(), packed(ids, mask).float()
    assert torch.allclose(a, b, atol=5e-2, rtol=5e-2)


def test_dropout_train_mode_runs_and_pads_are_zero(tiny_bert):
    from clusterns.training.run import build_encoder, parse_args

    model_args, data_args, _, _ = parse_args(_argv(tiny_bert, "avg")[:-4] + ["--max_seq_length", "40", "--packed_linear", "true"])
    encoder = build_encoder(model_args, data_args, None)
    assert is_packed(encoder.backbone)
    encoder.train()
    batch = _batch(encoder)
    ids, mask = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1]), batch["attention_mask"].reshape(-1, batch["input_ids"].shape[-1])
    out = encoder.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert torch.isfinite(out.last_hidden_state).all()
    assert not out.last_hidden_state[mask == 0].any()  # pad positions are zeros, never read
    assert len(out.hidden_states) == encoder.backbone.config.num_hidden_layers + 1
    a, b = encoder(ids, mask), encoder(ids, mask)
    assert not torch.allclose(a, b)  # dropout is active


# ---- fallbacks and the switch ---------------------------------------------------------------------
def test_unpadded_and_maskless_calls_use_the_plain_forward(tiny_bert):
    plain, packed, _ = _pair(tiny_bert, "cls")
    plain.eval(), packed.eval()
    controller = packed.backbone._clusterns_packing
    ids = plain.tokenizer(["a man is playing .", "a dog runs ."], padding=True, return_tensors="pt")["input_ids"][:, :4]
    before = controller.calls
    torch.testing.assert_close(packed.backbone(input_ids=ids).last_hidden_state, plain.backbone(input_ids=ids).last_hidden_state)
    full = torch.ones_like(ids)
    torch.testing.assert_close(packed.backbone(input_ids=ids, attention_mask=full).last_hidden_state,
                               plain.backbone(input_ids=ids, attention_mask=full).last_hidden_state)
    assert controller.calls == before and controller.stack == []


def test_gradient_checkpointing_falls_back(tiny_bert):
    plain, packed, _ = _pair(tiny_bert, "avg")
    if hasattr(packed.backbone, "activation_checkpointing_enable"):  # transformers >= 5
        packed.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        packed.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    packed.train(), plain.train()
    batch = _batch(plain)
    ids, mask = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1]), batch["attention_mask"].reshape(-1, batch["input_ids"].shape[-1])
    calls = packed.backbone._clusterns_packing.calls
    packed(ids, mask).sum().backward()
    assert packed.backbone._clusterns_packing.calls == calls


def test_enable_disable_idempotent_state_dict_unchanged(tiny_bert, tmp_path):
    plain, _ = _build(tiny_bert, "cls", False)
    keys = list(plain.state_dict())
    assert enable_packed_linear(plain.backbone) and enable_packed_linear(plain.backbone)
    assert list(plain.state_dict()) == keys
    plain.save_pretrained(tmp_path / "saved")  # checkpoints are unaffected
    from clusterns.modeling.encoder import SentenceEncoder

    loaded = SentenceEncoder.from_pretrained(tmp_path / "saved")
    assert not is_packed(loaded.backbone)
    disable_packed_linear(plain.backbone)
    assert not is_packed(plain.backbone)
    assert "forward" not in plain.backbone.encoder.layer[0].__dict__
    assert len(plain.backbone._forward_pre_hooks) == 0


def test_unsupported_backbone_is_left_alone():
    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

    model = Other()
    assert enable_packed_linear(model) is False
    assert not is_packed(model)


def test_switch_parses_and_reaches_the_encoder(tiny_bert):
    from clusterns.training.arguments import ModelArguments
    from clusterns.training.run import build_encoder, parse_args

    default = ModelArguments().packed_linear
    argv = _argv(tiny_bert, "cls")
    for flags, expected in (([], default), (["--packed_linear"], True), (["--packed_linear", "false"], False)):
        model_args, data_args, _, _ = parse_args(argv + flags)
        assert model_args.packed_linear is expected
        assert is_packed(build_encoder(model_args, data_args, None).backbone) is expected
    if default:
        model_args, _, _, _ = parse_args(argv + ["--no_packed_linear"])
        assert model_args.packed_linear is False


# ---- DiffCSE: the generator (and, without pads in the loss, the discriminator) follow the encoder -------------------
@pytest.mark.parametrize("reduction,discriminator_packed", [("all_positions", False), ("exclude_padding", True)])
def test_diffcse_extra_passes_follow_packing(tiny_bert, reduction, discriminator_packed):
    """Packed, the generator runs its layers and MLM head on non-pad tokens only (same replacement ids, pads 0);
    the discriminator is packed only when pads leave the RTD loss. Loss and gradients equal the plain run's."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    from clusterns.training.data import ContrastiveCollator
    from clusterns.training.model import ContrastiveModel
    from clusterns.objectives.diffcse.objective import DiffCSEArguments, DiffCSEObjective

    plain, packed, model_args = _pair(tiny_bert, "cls")
    cfg = AutoConfig.from_pretrained(str(tiny_bert), num_hidden_layers=1, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(1)
    generator = AutoModelForMaskedLM.from_config(cfg)
    args = DiffCSEArguments(lambda_weight=1.0, masking_ratio=0.3, generator_dropout=False, rtd_reduction=reduction)
    objectives = []
    for enc in (plain, packed):
        torch.manual_seed(2)  # the same RTD head
        objectives.append(DiffCSEObjective(model_args, copy.deepcopy(args), enc, generator=copy.deepcopy(generator)))
    assert objectives[0].packed_generator_head is None and not is_packed(objectives[0].discriminator.backbone)
    assert objectives[1].packed_generator_head is not None and is_packed(objectives[1].generator_base)
    assert not any(k.startswith(("packed_generator_head", "generator")) for k in objectives[1].state_dict())
    assert is_packed(objectives[1].discriminator.backbone) is discriminator_packed

    ids = plain.tokenizer(SENTENCES, truncation=True, max_length=40)["input_ids"]
    collate = ContrastiveCollator(pad_token_id=plain.tokenizer.pad_token_id, num_views=2,
                                  batch_transform=objectives[0].batch_transform(plain.tokenizer))
    torch.manual_seed(3)
    batch = collate([{"sent0_ids": x} for x in ids])
    mlm = batch["mlm_input_ids"].reshape(-1, batch["mlm_input_ids"].shape[-1])
    mask = batch["attention_mask"].reshape(mlm.shape)
    assert (mask == 0).any()  # the batch has padding to skip
    got = [o.train().corrupt(mlm, mask) for o in objectives]
    assert torch.equal(got[0] * mask, got[1]) and not got[1][mask == 0].any()

    models = [ContrastiveModel(enc, obj).train() for enc, obj in zip((plain, packed), objectives)]
    calls = objectives[1].discriminator.backbone._clusterns_packing.calls if discriminator_packed else None
    outs = [m(**batch) for m in models]
    if discriminator_packed:  # the packed discriminator really ran packed (it reads the 2-D mask)
        assert objectives[1].discriminator.backbone._clusterns_packing.calls == calls + 1
    assert torch.allclose(outs[0]["loss"], outs[1]["loss"], atol=1e-5), (outs[0]["loss"], outs[1]["loss"])
    for out in outs:
        out["loss"].backward()
    _assert_grads_close(models[0], models[1])


# ---- attention on the packed tokens (--packed_attention jagged: CUDA's default) ------------------------------------
@pytest.mark.parametrize("backbone,pooler", [("tiny_bert", "avg"), ("tiny_roberta", "avg"), ("tiny_bert", "cls")])
def test_jagged_attention_equals_the_padded_layout(request, backbone, pooler):
    """SDPA on nested jagged tensors of the packed tokens: the same vectors and gradients as the padded layout (eval and
    train mode without dropout), the pads' hidden states zeros as before (cls: the last layer at the first tokens)."""
    model = request.getfixturevalue(backbone)
    padded, _ = _build(model, pooler, True)
    jagged = copy.deepcopy(padded)
    assert enable_packed_linear(jagged.backbone, attention="jagged")
    batch = _batch(padded)
    length = batch["input_ids"].shape[-1]
    ids, mask = batch["input_ids"].reshape(-1, length), batch["attention_mask"].reshape(-1, length)
    for training in (False, True):
        padded.train(training)
        jagged.train(training)
        a, b = padded(ids, mask), jagged(ids, mask)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        if training:
            weights = torch.randn_like(a)
            (a * weights).sum().backward()
            (b * weights).sum().backward()
            _assert_grads_close(padded, jagged)
    hidden = jagged.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not hidden[mask == 0].any()


def test_jagged_attention_each_sentence_and_dropout():
    """(On the CPU, torch's nested-tensor SDPA loops over the sentences, with host syncs; on CUDA it calls the
    variable-length kernels with the offsets as they are: scripts/bench_gpu.py counts the syncs there.)"""
    from clusterns.modeling.packing import jagged_attention

    q, k, v = (torch.randn(9, 2, 8, requires_grad=True) for _ in range(3))
    offsets = torch.tensor([0, 4, 5, 9])
    out = jagged_attention(q, k, v, offsets, 4, 0.0, 0.5)
    assert out.shape == (9, 2, 8)
    for start, end in ((0, 4), (4, 5), (5, 9)):  # each sentence attends to its own tokens only
        ref = torch.nn.functional.scaled_dot_product_attention(*(t[start:end].transpose(0, 1) for t in (q, k, v)), scale=0.5)
        torch.testing.assert_close(out[start:end], ref.transpose(0, 1))
    torch.manual_seed(0)
    dropped = jagged_attention(q, k, v, offsets, 4, 0.5, 0.5)
    dropped.sum().backward()
    assert torch.isfinite(q.grad).all() and not torch.allclose(dropped, out)


def test_packed_attention_auto_is_padded_on_the_cpu_and_falls_back(tiny_bert, monkeypatch, caplog):
    from clusterns.modeling import packing

    encoder, _ = _build(tiny_bert, "avg", True)
    controller = encoder.backbone._clusterns_packing
    assert controller.attention == "auto" and not controller.jagged_for(torch.device("cpu"))
    assert controller.jagged_for(torch.device("cuda"))
    batch = _batch(encoder)
    length = batch["input_ids"].shape[-1]
    ids, mask = batch["input_ids"].reshape(-1, length), batch["attention_mask"].reshape(-1, length)
    encoder.eval()
    expected = encoder(ids, mask)
    monkeypatch.setattr(controller, "jagged_for", lambda device: True)  # as on CUDA ...

    def no_kernel(*args, **kwargs):
        raise NotImplementedError("no kernel for this build")

    monkeypatch.setattr(packing, "jagged_attention", no_kernel)  # ... with a torch build lacking the kernel
    with caplog.at_level("WARNING"):
        torch.testing.assert_close(encoder(ids, mask), expected)
    assert "no kernel for this build" in controller.jagged_failed and "padded layout is used from now on" in caplog.text
    controller.attention = "jagged"  # asked for explicitly: the error is not swallowed
    with pytest.raises(NotImplementedError):
        encoder(ids, mask)


def test_packed_attention_flag(tiny_bert, capsys):
    from clusterns.cli.train import train_main
    from clusterns.training.run import build_encoder, parse_args

    model_args, data_args, _, _ = parse_args(_argv(tiny_bert, "cls", ["--packed_attention", "jagged"]))
    assert build_encoder(model_args, data_args, None).backbone._clusterns_packing.attention == "jagged"
    with pytest.raises(SystemExit) as info:
        train_main(_argv(tiny_bert, "cls", ["--packed_attention", "ragged", "--train_file", "x.txt"]))
    assert info.value.code == 2 and "--packed_attention must be one of auto, padded, jagged" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # the layout of layers that are not packed: refused, not ignored
        train_main(_argv(tiny_bert, "cls", ["--packed_attention", "jagged", "--no_packed_linear", "--train_file", "x.txt"]))
    assert info.value.code == 2 and "--packed_attention jagged applies to the packed layers" in capsys.readouterr().err


def test_a_cls_subclass_reading_other_tokens_is_not_pruned(tiny_bert):
    """A pooler derived from the cls one with a pool() of its own (here: first + last real token) gets every token's
    last-layer state: the inherited read_positions does not apply to it."""
    from clusterns.modeling.pooling import ClsPooler

    class FirstAndLast(ClsPooler):
        def pool(self, attention_mask, last_hidden_state, hidden_states, first_layer_index):
            last = attention_mask.sum(1) - 1
            return last_hidden_state[:, 0] + last_hidden_state[torch.arange(len(last)), last]

    plain, packed, _ = _pair(tiny_bert, "cls_before_pooler")
    plain.eval(), packed.eval()
    for encoder in (plain, packed):
        encoder.pooling = FirstAndLast("first_and_last", "test")
    assert not packed.pooling.reads_one_token
    batch = _batch(plain)
    length = batch["input_ids"].shape[-1]
    ids, mask = batch["input_ids"].reshape(-1, length), batch["attention_mask"].reshape(-1, length)
    reads = packed.backbone._clusterns_packing.read_position_calls
    torch.testing.assert_close(packed.pooled(ids, mask), plain.pooled(ids, mask), atol=1e-5, rtol=1e-5)
    assert packed.backbone._clusterns_packing.read_position_calls == reads


def test_prune_last_layer_flag(tiny_bert, capsys):
    """--prune_last_layer: on by default with packed layers; false runs every token through the last layer (same
    vectors); asked for with --no_packed_linear it is refused, not ignored."""
    from clusterns.cli.train import train_main
    from clusterns.training.run import build_encoder, parse_args

    vectors = []
    for flags, prunes in (([], True), (["--prune_last_layer", "false"], False), (["--prune_last_layer"], True)):
        encoder = _build(tiny_bert, "cls", True, flags)[0].eval()  # seeded: the same projector
        controller = encoder.backbone._clusterns_packing
        assert controller.prune_last_layer is prunes
        batch = _batch(encoder)
        length = batch["input_ids"].shape[-1]
        vectors.append(encoder(batch["input_ids"].reshape(-1, length), batch["attention_mask"].reshape(-1, length)))
        assert controller.read_position_calls == int(prunes)
    torch.testing.assert_close(vectors[0], vectors[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(SystemExit) as info:
        train_main(_argv(tiny_bert, "cls", ["--prune_last_layer", "--no_packed_linear", "--train_file", "x.txt"]))
    assert info.value.code == 2 and "--prune_last_layer applies to the packed layers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # a pooler that reads every token: nothing to prune, refused
        train_main(_argv(tiny_bert, "avg", ["--prune_last_layer", "--train_file", "x.txt"]))
    assert info.value.code == 2 and "--pooler_type avg reads every token" in capsys.readouterr().err
    model_args, data_args, _, _ = parse_args(_argv(tiny_bert, "avg"))  # the default with avg: no complaint
    assert not build_encoder(model_args, data_args, None).pooling.reads_one_token
    model_args, data_args, _, _ = parse_args(_argv(tiny_bert, "cls", ["--no_packed_linear"]))  # the default: no complaint
    assert model_args.prune_last_layer is None and not is_packed(build_encoder(model_args, data_args, None).backbone)


def test_a_deep_copy_of_a_packed_encoder_runs_packed_with_its_own_state(tiny_bert):
    """The hooks read the controller of the module they run on: a copy's forward runs packed on its own stack (a hook
    bound to the original's controller would leave the copy's layers without a state and without their mask)."""
    encoder, _ = _build(tiny_bert, "avg", True)
    plain, _ = _build(tiny_bert, "avg", False)
    copied = copy.deepcopy(encoder)
    batch = _batch(encoder)
    length = batch["input_ids"].shape[-1]
    ids, mask = batch["input_ids"].reshape(-1, length), batch["attention_mask"].reshape(-1, length)
    for model in (encoder, copied, plain):
        model.eval()
    before = copied.backbone._clusterns_packing.calls, encoder.backbone._clusterns_packing.calls
    torch.testing.assert_close(copied(ids, mask), plain(ids, mask), atol=1e-5, rtol=1e-5)
    assert copied.backbone._clusterns_packing.calls == before[0] + 1 and encoder.backbone._clusterns_packing.calls == before[1]
