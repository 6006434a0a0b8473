"""Mixed precision on CPU (bf16 / fp16 autocast): every objective's similarity logits, cross-entropy and
clustering state stay in fp32, the losses stay finite and close to fp32, and --bf16 trains end to end.

The strong check: under autocast the objective's loss equals the same objective evaluated in plain fp32 on
the same (mixed-precision) embeddings, to 1e-5. A cosine matrix multiplied in bf16 would be off by ~1e-2
(asserted too, so the check is sensitive)."""
from __future__ import annotations

import copy
import math
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import WORDS, _write_wordpiece_vocab

from clusterns.training.arguments import ModelArguments
from clusterns.training.data import ContrastiveCollator
from clusterns.modeling.encoder import EncoderConfig, SentenceEncoder
from clusterns.training.model import ContrastiveModel
from clusterns.objectives import get_objective_class
from clusterns.objectives.functional import cosine_matrix, infonce_logits
from clusterns.precision import fp32_region

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
OBJECTIVES = ("infonce", "clusterns", "mixcse", "diffcse")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny BERT with diverse embeddings (init std 0.2, no dropout), a 1-layer MLM generator, a corpus."""
    from transformers import AutoModelForMaskedLM, BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("mp-assets")
    model = root / "bert"
    model.mkdir()
    _write_wordpiece_vocab(model / "vocab.txt")
    tok = BertTokenizerFast.from_pretrained(str(model), do_lower_case=True)
    tok.model_max_length = 64
    tok.save_pretrained(model)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(model)
    generator = root / "generator"
    torch.manual_seed(1)
    AutoModelForMaskedLM.from_config(BertConfig(**{**config.to_dict(), "num_hidden_layers": 1})).save_pretrained(generator)
    tok.save_pretrained(generator)
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS[:-1]) for _ in range(rng.randint(4, 10))) + " ." for _ in range(64)]
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(sentences) + "\n")
    return {"model": model, "generator": generator, "corpus": corpus, "sentences": sentences[:8]}


def objective_args(name, generator):
    cls = get_objective_class(name)
    if cls.arguments_class is None:
        return cls, None
    kwargs = {
        "clusterns": dict(kmeans=4, kmean_cosine=1.0, kmeans_lr=0.1, bml_weight=0.1),
        "mixcse": dict(lambdas=0.2),
        "diffcse": dict(generator_name=str(generator), masking_scheme="kodiffcse", generator_dropout=False, lambda_weight=0.1),
    }[name]
    return cls, cls.arguments_class(**kwargs)


def build(assets, name):
    torch.manual_seed(0)
    encoder = SentenceEncoder.from_backbone(str(assets["model"]), EncoderConfig(pooler_type="cls", projector="simcse_mlp"))
    cls, args = objective_args(name, assets["generator"])
    model_args = ModelArguments(model_name_or_path=str(assets["model"]), objective=name, temp=0.05)
    model = ContrastiveModel(encoder, cls(model_args, args, encoder)).train()
    tok = encoder.tokenizer
    collator = ContrastiveCollator(tok.pad_token_id, num_views=2, batch_transform=model.objective.batch_transform(tok))
    batch = collator([{"sent0_ids": tok(s)["input_ids"]} for s in assets["sentences"]])
    return model, batch


class Spy:
    """Records the dtype of every F.cross_entropy input and the EncodedViews the model produced."""

    def __init__(self, monkeypatch, model):
        self.ce_dtypes: list[torch.dtype] = []
        self.views = None
        ce = F.cross_entropy

        def cross_entropy(input, *args, **kwargs):
            self.ce_dtypes.append(input.dtype)
            return ce(input, *args, **kwargs)

        monkeypatch.setattr(F, "cross_entropy", cross_entropy)
        encode = model.encode_views

        def encode_views(*args, **kwargs):
            self.views = encode(*args, **kwargs)
            return self.views

        monkeypatch.setattr(model, "encode_views", encode_views)


def detached(views):
    from clusterns.objectives.base import EncodedViews

    return EncodedViews(*(t.detach() for t in (views.pooled, views.local, views.gathered)))


@pytest.mark.parametrize("precision", list(DTYPES))
@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_losses_fp32_under_autocast(assets, name, precision, monkeypatch):
    model, batch = build(assets, name)
    if name == "clusterns":  # one fp32 training forward starts the clustering; the checked forward uses it
        model(**batch)
        assert model.objective.started
    reference_objective = copy.deepcopy(model.objective)
    with torch.no_grad():
        loss_fp32 = float(model.__class__(model.encoder, copy.deepcopy(model.objective))(**batch)["loss"])

    spy = Spy(monkeypatch, model)
    with torch.autocast("cpu", dtype=DTYPES[precision]):
        out = model(**batch)
    loss = out["loss"]
    value = float(loss.detach())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert spy.ce_dtypes and all(d in (torch.float32, torch.float64) for d in spy.ce_dtypes), spy.ce_dtypes
    # Close to the all-fp32 loss (the encoder itself ran in reduced precision).
    assert abs(value - loss_fp32) <= 0.05 * abs(loss_fp32) + 0.05, (value, loss_fp32)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    # The same objective in plain fp32 on the same mixed-precision embeddings gives the same loss: the logits
    # were not multiplied in bf16/fp16.
    with torch.no_grad():
        again = reference_objective(detached(spy.views), batch, model.encoder)
    if name == "diffcse":  # its discriminator rightly runs in mixed precision: compare the contrastive part
        assert out["logs"]["contrastive/loss"].item() == pytest.approx(again.logs["contrastive/loss"].item(), rel=1e-5, abs=1e-6)
        assert out["logs"]["rtd/loss"].item() == pytest.approx(again.logs["rtd/loss"].item(), rel=0.05)
    else:
        assert value == pytest.approx(float(again.loss), rel=1e-5, abs=1e-6)
    if name == "clusterns":
        centroids = model.objective.centroids
        assert centroids.dtype == torch.float32
        torch.testing.assert_close(centroids, reference_objective.centroids, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", list(DTYPES))
def test_cosine_logits_fp32_inside_autocast(precision):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 64, generator=g), torch.randn(16, 64, generator=g)
    exact = (F.normalize(z1.double(), dim=-1) @ F.normalize(z2.double(), dim=-1).T) / 0.05
    with torch.autocast("cpu", dtype=DTYPES[precision]):
        naive = (F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).T) / 0.05  # what autocast does to a bare matmul
        with fp32_region("cpu"):  # the precision boundary of training/model.py
            logits = infonce_logits(z1, z2, 0.05)
            cos = cosine_matrix(z1.to(DTYPES[precision]), z2)  # half-precision inputs are promoted
            inside = z1 @ z2.T
    assert logits.dtype == cos.dtype == inside.dtype == torch.float32
    torch.testing.assert_close(logits.double(), exact, rtol=1e-5, atol=1e-5)
    assert naive.dtype == DTYPES[precision] and (naive.double() - exact).abs().max() > 1e-3  # the check is sensitive


@pytest.mark.parametrize("subnetworks", [False, True])
def test_the_model_is_the_one_precision_boundary(subnetworks):
    """ContrastiveModel runs an objective with autocast off (its logits in full fp32), unless the objective
    declares sub-networks that stay in mixed precision (then it wraps its own losses, as DiffCSE)."""
    from clusterns.objectives.base import EncodedViews, Objective, ObjectiveOutput

    seen = {}

    class Probe(Objective):
        name = "probe"
        runs_subnetworks_in_autocast = subnetworks

        def forward(self, views: EncodedViews, batch, encoder):
            seen["autocast"] = torch.is_autocast_enabled("cpu")
            z = views.gathered
            return ObjectiveOutput(infonce_logits(z[:, 0], z[:, 1], 0.05).logsumexp(-1).mean())

    class Encoder(torch.nn.Module):
        projector = torch.nn.Identity()

        def pooled(self, input_ids, attention_mask, token_type_ids=None, num_views=None):
            return torch.randn(input_ids.shape[0], 8)

    model = ContrastiveModel(Encoder(), Probe(SimpleNamespace(temp=0.05)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.ones(4, 2, 3, dtype=torch.long), torch.ones(4, 2, 3, dtype=torch.long))
    assert seen["autocast"] is subnetworks
    assert out["loss"].dtype == (torch.bfloat16 if subnetworks else torch.float32)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_bf16_training_end_to_end(assets, name, tmp_path):
    """train.py --bf16 on CPU (HF's CPU autocast): finite logged losses, clustering state in fp32."""
    import json

    from safetensors.torch import load_file

    from clusterns.cli.train import train_main

    flags = {
        "infonce": [],
        "clusterns": ["--kmeans", "4", "--kmean_cosine", "1.0"],
        "mixcse": ["--lambdas", "0.2"],
        "diffcse": ["--generator_name", str(assets["generator"]), "--lambda_weight", "0.1"],
    }[name]
    out = tmp_path / "run"
    train_main([str(a) for a in [
        "--model_name_or_path", assets["model"], "--train_file", assets["corpus"], "--output_dir", out, "--objective", name,
        "--per_device_train_batch_size", 8, "--max_steps", 3, "--use_cpu", "--bf16", "--logging_steps", 1,
        "--report_to", "none", "--disable_tqdm", "true", "--seed", 42, *flags,
    ]])
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    if name == "clusterns":
        assert [h["cluster/active"] for h in state["log_history"] if "loss" in h] == [0.0, 1.0, 1.0]
        saved = load_file(str(out / "objective.safetensors"))
        assert saved["cluster.centroids"].dtype == torch.float32 and torch.isfinite(saved["cluster.centroids"]).all()
