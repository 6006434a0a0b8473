"""SimCSE's auxiliary MLM (--do_mlm): which tokens are masked, the labels, --mlm_clone_inputs, the LM head taken from
the checkpoint's pre-training head, and the loss added with its weight (checked by hand)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoTokenizer

from conftest import with_mlm_head

from clusterns.modeling.encoder import EncoderConfig, SentenceEncoder
from clusterns.objectives.infonce import InfoNCEObjective
from clusterns.objectives.masked_lm import (
    IGNORE_INDEX,
    MLM_INPUT_IDS,
    MLM_LABELS,
    MaskedLMArguments,
    MaskedLMLoss,
    MLMBatchMasking,
    mask_for_mlm,
    pretrained_mlm_head,
)
from clusterns.training.arguments import ModelArguments
from clusterns.training.data import ContrastiveCollator
from clusterns.training.model import ContrastiveModel

CLS, SEP, PAD, MASK, UNK = 2, 3, 0, 4, 1
SPECIALS = [PAD, UNK, CLS, SEP, MASK]


# ---- masking ------------------------------------------------------------------------------------------
def test_which_tokens_are_masked_and_the_labels():
    ids = torch.tensor([[CLS, 10, 11, 12, SEP, PAD], [CLS, 13, MASK, 14, 15, SEP]])
    # probability ~1: every non-special token is selected; the labels are the original ids there, -100 elsewhere
    masked, labels = mask_for_mlm(ids, SPECIALS, MASK, 50, 1.0 - 1e-7, torch.Generator().manual_seed(0))
    assert labels.tolist() == [[-100, 10, 11, 12, -100, -100], [-100, 13, -100, 14, 15, -100]]
    special = torch.isin(ids, torch.tensor(SPECIALS))
    assert torch.equal(masked[special], ids[special])  # CLS, SEP, PAD and an in-sentence [MASK] are never touched
    # a small probability: the unselected tokens are unchanged and carry no label
    masked, labels = mask_for_mlm(ids, SPECIALS, MASK, 50, 0.3, torch.Generator().manual_seed(1))
    unselected = labels == IGNORE_INDEX
    assert torch.equal(masked[unselected], ids[unselected])
    assert torch.equal(labels[~unselected], ids[~unselected])


def test_eighty_ten_ten_over_many_tokens():
    ids = torch.randint(10, 60, (400, 50))
    masked, labels = mask_for_mlm(ids, SPECIALS, MASK, 60, 0.15, torch.Generator().manual_seed(0))
    selected = labels != IGNORE_INDEX
    assert abs(selected.float().mean().item() - 0.15) < 0.01
    to_mask = (masked == MASK) & selected
    kept = (masked == ids) & selected
    assert abs(to_mask.sum().item() / selected.sum().item() - 0.8) < 0.02
    assert abs(kept.sum().item() / selected.sum().item() - 0.1) < 0.02  # 10% unchanged (+ random draws of the same id)


@pytest.mark.parametrize("clone", [True, False])
def test_batch_transform_and_mlm_clone_inputs(clone, tiny_bert):
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    rows = [{"sent0_ids": tok.encode(s)} for s in ["a man is playing a guitar .", "two dogs run", "a girl rides a horse on the street"]]
    plain = ContrastiveCollator(pad_token_id=tok.pad_token_id)(rows)
    transform = MLMBatchMasking.from_tokenizer(tok, 0.5, clone_inputs=clone, seed=42)
    batch = ContrastiveCollator(pad_token_id=tok.pad_token_id, extra_transforms=(transform,))(rows)
    assert batch[MLM_INPUT_IDS].shape == batch[MLM_LABELS].shape == plain["input_ids"].shape
    selected = batch[MLM_LABELS] != IGNORE_INDEX
    assert selected.any() and torch.equal(batch[MLM_LABELS][selected], plain["input_ids"][selected])
    assert not torch.equal(batch[MLM_INPUT_IDS], plain["input_ids"])
    # both views of a sentence are masked independently
    assert not torch.equal(batch[MLM_LABELS][:, 0], batch[MLM_LABELS][:, 1])
    if clone:  # SimCSE: the contrastive views stay clean
        assert torch.equal(batch["input_ids"], plain["input_ids"])
    else:  # ClusterNS / MixCSE: the contrastive views are the masked ones
        assert torch.equal(batch["input_ids"], batch[MLM_INPUT_IDS])
    # the same batch gets the same masks (content-seeded; the global RNG is not used)
    torch.manual_seed(123)
    again = ContrastiveCollator(pad_token_id=tok.pad_token_id, extra_transforms=(transform,))(rows)
    assert torch.equal(again[MLM_INPUT_IDS], batch[MLM_INPUT_IDS])


def test_flag_ranges():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="--mlm_probability"):
            MaskedLMArguments(do_mlm=True, mlm_probability=bad)
    with pytest.raises(ValueError, match="--mlm_weight"):
        MaskedLMArguments(do_mlm=True, mlm_weight=-0.1)
    # (parse_args sets mlm_clone_inputs to None when the command line does not give it)
    assert MaskedLMArguments(mlm_weight=0.5, mlm_clone_inputs=None).given_without_do_mlm() == ["--mlm_weight"]
    assert MaskedLMArguments(mlm_clone_inputs=False).given_without_do_mlm() == ["--mlm_clone_inputs"]
    assert MaskedLMArguments(do_mlm=True, mlm_weight=0.5).given_without_do_mlm() == []


# ---- the head -------------------------------------------------------------------------------------------
def test_bert_head_is_the_checkpoints_pretraining_head(tiny_bert, tmp_path):
    folder = with_mlm_head(tiny_bert, tmp_path / "bert-mlm")
    saved = load_file(str(folder / "model.safetensors"))
    head, pretrained = pretrained_mlm_head(str(folder))
    assert pretrained
    for key, value in head.state_dict().items():
        name = f"cls.{key}"
        if name in saved:
            torch.testing.assert_close(value, saved[name], rtol=0, atol=0, msg=key)
    assert "cls.predictions.transform.dense.weight" in saved  # the comparison above covered the head's own layers
    # the decoder starts as the (tied) word embeddings, as BertForPreTraining's, but is a parameter of its own
    decoder = head.predictions.decoder.weight
    torch.testing.assert_close(decoder, saved["bert.embeddings.word_embeddings.weight"], rtol=0, atol=0)
    backbone = SentenceEncoder.from_backbone(str(folder), EncoderConfig(pooler_type="cls", projector="none")).backbone
    assert decoder.data_ptr() != backbone.embeddings.word_embeddings.weight.data_ptr()


def test_roberta_head_and_a_checkpoint_without_one(tiny_roberta, tiny_bert, tmp_path):
    folder = with_mlm_head(tiny_roberta, tmp_path / "roberta-mlm")
    saved = load_file(str(folder / "model.safetensors"))
    head, pretrained = pretrained_mlm_head(str(folder))
    assert pretrained
    torch.testing.assert_close(head.dense.weight, saved["lm_head.dense.weight"], rtol=0, atol=0)
    torch.testing.assert_close(head.layer_norm.weight, saved["lm_head.layer_norm.weight"], rtol=0, atol=0)
    _, pretrained = pretrained_mlm_head(str(tiny_bert))  # a bare BertModel: no head weights to start from
    assert not pretrained


# ---- the loss ---------------------------------------------------------------------------------------------
def test_loss_is_the_objective_plus_weight_times_mlm_by_hand(tiny_bert, tmp_path):
    folder = with_mlm_head(tiny_bert, tmp_path / "bert-mlm")
    encoder = SentenceEncoder.from_backbone(str(folder), EncoderConfig(pooler_type="cls", projector="simcse_mlp"), dropout_prob=0.0)
    head, _ = pretrained_mlm_head(str(folder))
    args = ModelArguments()
    model = ContrastiveModel(encoder, InfoNCEObjective(args, None, encoder), masked_lm=MaskedLMLoss(head, 0.1)).train()
    tok = encoder.tokenizer
    rows = [{"sent0_ids": tok.encode(s)} for s in ["a man is playing a guitar .", "two dogs run", "a girl rides a horse", "the sky"]]
    batch = ContrastiveCollator(pad_token_id=tok.pad_token_id, extra_transforms=(MLMBatchMasking.from_tokenizer(tok, 0.3, True),))(rows)
    out = model(**batch)
    contrastive = ContrastiveModel(encoder, InfoNCEObjective(args, None, encoder)).train()(
        batch["input_ids"], batch["attention_mask"])["loss"]
    with torch.no_grad():
        L = batch["input_ids"].shape[-1]
        hidden = encoder.backbone(input_ids=batch[MLM_INPUT_IDS].view(-1, L), attention_mask=batch["attention_mask"].view(-1, L)).last_hidden_state
        scores = head(hidden)  # every position, CE ignoring -100: SimCSE's formulation
        mlm = F.cross_entropy(scores.view(-1, scores.shape[-1]), batch[MLM_LABELS].view(-1), ignore_index=-100)
    assert out["logs"]["mlm/loss"].item() == pytest.approx(mlm.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(contrastive.item() + 0.1 * mlm.item(), rel=1e-5)
    out["loss"].backward()
    assert head.predictions.transform.dense.weight.grad.abs().sum() > 0  # the head trains
