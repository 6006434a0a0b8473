"""Collator-side masking for DiffCSE: BERT 80/10/10 (dynamic) and KoDiffCSE's fixed-count [SEP] scheme (static)."""
from __future__ import annotations

import pickle
import random

import pytest
import torch
from transformers import AutoTokenizer

from clusterns.training.data import ContrastiveCollator
from clusterns.objectives.diffcse.masking import MLMMasking, kodiffcse_mask_tokens, row_keys, special_token_mask

SENTENCES = [
    "a man is playing a guitar .",
    "two dogs run in the street with a ball and a red car .",
    "the woman is slicing an onion .",
    "children are dancing .",
    "a group of people sitting on a bus near the big white plane and a blue train .",
    "dog",
]


def batch_for(tokenizer, sentences=SENTENCES, views=2):
    collator = ContrastiveCollator(pad_token_id=tokenizer.pad_token_id, num_views=views)
    feats = [{"sent0_ids": tokenizer(s)["input_ids"]} for s in sentences]
    return collator(feats)


@pytest.fixture(scope="module")
def bert_tok(tiny_bert):
    return AutoTokenizer.from_pretrained(str(tiny_bert))


@pytest.fixture(scope="module")
def roberta_tok(tiny_roberta):
    return AutoTokenizer.from_pretrained(str(tiny_roberta))


# ---- BERT 80/10/10 ---------------------------------------------------------------------------


def original_mask_tokens(inputs, tokenizer, prob):
    """DiffCSE train.py's OurDataCollatorWithPadding.mask_tokens (HF 4.2.1), verbatim logic."""
    inputs = inputs.clone()
    labels = inputs.clone()
    probability_matrix = torch.full(labels.shape, prob)
    special_tokens_mask = [tokenizer.get_special_tokens_mask(val, already_has_special_tokens=True) for val in labels.tolist()]
    special_tokens_mask = torch.tensor(special_tokens_mask, dtype=torch.bool)
    probability_matrix.masked_fill_(special_tokens_mask, value=0.0)
    masked_indices = torch.bernoulli(probability_matrix).bool()
    indices_replaced = torch.bernoulli(torch.full(labels.shape, 0.8)).bool() & masked_indices
    inputs[indices_replaced] = tokenizer.convert_tokens_to_ids(tokenizer.mask_token)
    indices_random = torch.bernoulli(torch.full(labels.shape, 0.5)).bool() & masked_indices & ~indices_replaced
    random_words = torch.randint(len(tokenizer), labels.shape, dtype=torch.long)
    inputs[indices_random] = random_words[indices_random]
    return inputs


@pytest.mark.parametrize("which", ["bert", "roberta"])
def test_bert_scheme_matches_original_draws(which, bert_tok, roberta_tok):
    tok = bert_tok if which == "bert" else roberta_tok
    batch = batch_for(tok)
    flat = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1])
    masking = MLMMasking.from_tokenizer(tok, "bert", 0.3, rng="global")
    for seed in range(5):
        torch.manual_seed(seed)
        ours = masking(batch)["mlm_input_ids"]
        torch.manual_seed(seed)
        ref = original_mask_tokens(flat, tok, 0.3)
        assert ours.shape == batch["input_ids"].shape
        assert torch.equal(ours.reshape(-1, flat.shape[-1]), ref)


@pytest.mark.parametrize("rng", ["content", "global"])
def test_bert_scheme_statistics_and_specials(bert_tok, rng):
    tok = bert_tok
    batch = batch_for(tok, SENTENCES * 60)
    ids = batch["input_ids"]
    special = special_token_mask(ids, tok.all_special_ids)
    masking = MLMMasking.from_tokenizer(tok, "bert", 0.3, rng=rng)
    torch.manual_seed(0)
    out = masking(batch)["mlm_input_ids"]
    assert torch.equal(out[special], ids[special])  # CLS, SEP, PAD never touched
    assert int(out.max()) < len(tok) and int(out.min()) >= 0
    n_tok = int((~special).sum())
    # P(changed) = 0.3 * (0.8 + 0.1 * (1 - 1/|V|)) ~= 0.27; P(mask) = 0.24
    assert abs(int((out == tok.mask_token_id).sum()) / n_tok - 0.24) < 0.02
    assert abs(int((out != ids).sum()) / n_tok - 0.27) < 0.02


def test_bert_scheme_is_dynamic_and_views_independent(bert_tok):
    sents = SENTENCES * 4
    masking = MLMMasking.from_tokenizer(bert_tok, "bert", 0.3)
    batch = batch_for(bert_tok, sents)
    rng_before = torch.get_rng_state()
    a = masking(batch)["mlm_input_ids"]
    assert torch.equal(torch.get_rng_state(), rng_before)  # dropout's global RNG is neither used nor advanced
    assert torch.equal(masking(batch)["mlm_input_ids"], a)  # a function of the batch: resumes reproduce it
    assert not torch.equal(a[:, 0], a[:, 1])  # the two views of a sentence are masked independently
    assert torch.equal(batch["input_ids"][:, 0], batch["input_ids"][:, 1])
    # Dynamic: the same sentences in another batch (another epoch's shuffle) get new masks.
    order = list(range(len(sents)))[::-1]
    b = masking(batch_for(bert_tok, [sents[i] for i in order]))["mlm_input_ids"]
    same = [torch.equal(a[i], b[j]) for j, i in enumerate(order)]
    assert sum(same) < len(same) // 2
    # The global mode draws from (and advances) the global RNG: two calls differ.
    g = MLMMasking.from_tokenizer(bert_tok, "bert", 0.3, rng="global")
    torch.manual_seed(1)
    assert not torch.equal(g(batch)["mlm_input_ids"], g(batch)["mlm_input_ids"])


def test_masking_is_picklable_and_validates(bert_tok):
    masking = MLMMasking.from_tokenizer(bert_tok, "bert", 0.3)
    clone = pickle.loads(pickle.dumps(masking))
    assert clone == masking
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="masking_ratio"):
            MLMMasking.from_tokenizer(bert_tok, "bert", bad)
    with pytest.raises(ValueError, match="masking_scheme"):
        MLMMasking.from_tokenizer(bert_tok, "electra", 0.3)
    with pytest.raises(ValueError, match="rng"):
        MLMMasking.from_tokenizer(bert_tok, "bert", 0.3, rng="numpy")


# ---- KoDiffCSE fixed count, [SEP], static ---------------------------------------------------------


def original_only_mask_tokens(input_ids, attn, tokenizer, prob, positions_per_row):
    """KoDiffCSE data/dataloader.py only_mask_tokens with the random positions given (the original draws them
    with Python random.randint(1, n), rejecting duplicates)."""
    inputs = input_ids.clone()
    special = torch.tensor(
        [tokenizer.get_special_tokens_mask(v, already_has_special_tokens=True) for v in inputs.tolist()], dtype=torch.bool
    )
    masking_map = torch.zeros(inputs.shape)
    for step, source in enumerate(special):
        num_of_false = inputs.shape[1] - source.sum()
        num_of_mask = max(1, int(num_of_false * prob))
        if num_of_false != 0:
            chosen = positions_per_row[step]
            assert len(chosen) == num_of_mask
            masking_map[step].index_add_(0, torch.arange(num_of_mask), torch.FloatTensor(chosen))
    masking_map = masking_map.long()
    special.scatter_(1, masking_map, torch.ones(inputs.shape).bool())
    inputs[special] = tokenizer.sep_token_id
    inputs *= attn
    inputs[inputs == 0] = tokenizer.pad_token_id
    inputs[:, 0] = tokenizer.cls_token_id
    return inputs


@pytest.mark.parametrize("which", ["bert", "roberta"])
@pytest.mark.parametrize("prob", [0.15, 0.3])
def test_kodiffcse_scheme_matches_original(which, prob, bert_tok, roberta_tok):
    tok = bert_tok if which == "bert" else roberta_tok
    batch = batch_for(tok)
    ids = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1])
    attn = batch["attention_mask"].reshape(-1, ids.shape[-1])
    masking = MLMMasking.from_tokenizer(tok, "kodiffcse", prob)
    out = masking(batch)["mlm_input_ids"].reshape(ids.shape)
    special = special_token_mask(ids, masking.special_ids)
    keys = row_keys(ids, attn, torch.arange(ids.shape[0]) % 2, masking.seed)
    _, chosen = kodiffcse_mask_tokens(ids, attn, special, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, prob, keys)
    n = (~special & attn.bool()).sum(1)
    for r in range(ids.shape[0]):
        pos = chosen[r].nonzero().flatten().tolist()
        assert len(pos) == max(1, int(n[r].item() * prob))  # fixed count
        assert all(1 <= p <= n[r] for p in pos)  # drawn from 1..n
    positions = [chosen[r].nonzero().flatten().tolist() for r in range(ids.shape[0])]
    ref = original_only_mask_tokens(ids, attn, tok, prob, positions)
    assert torch.equal(out, ref)
    assert (out[:, 0] == tok.cls_token_id).all()
    assert (out[attn == 0] == tok.pad_token_id).all()
    assert tok.mask_token_id not in out.tolist()  # [SEP] is KoDiffCSE's mask token


def test_kodiffcse_scheme_is_static_per_sentence(bert_tok):
    tok = bert_tok
    masking = MLMMasking.from_tokenizer(tok, "kodiffcse", 0.3)
    a = masking(batch_for(tok, SENTENCES))["mlm_input_ids"]
    # The same sentences in another order and another batch (other padding length): same masks.
    order = [3, 0, 5, 1]
    b = masking(batch_for(tok, [SENTENCES[i] for i in order]))["mlm_input_ids"]
    for j, i in enumerate(order):
        n = len(tok(SENTENCES[i])["input_ids"])
        assert torch.equal(a[i, :, :n], b[j, :, :n])
    # Two views get two independent masks (as KoDiffCSE's z1/z2 copies); over many sentences some differ.
    many = masking(batch_for(tok, SENTENCES * 1 + [s + " ." for s in SENTENCES]))["mlm_input_ids"]
    assert any(not torch.equal(many[i, 0], many[i, 1]) for i in range(many.shape[0]))


def test_kodiffcse_positions_are_uniform(bert_tok):
    """The hashed draw is a uniform k-subset: each eligible position is chosen about k/n of the time."""
    rng = random.Random(0)
    words = [w for w in bert_tok.get_vocab() if w.isalpha() and not w.startswith("[")][:60]
    sents = [" ".join(rng.choice(words) for _ in range(10)) for _ in range(600)]
    batch = batch_for(bert_tok, sents)
    ids = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1])
    attn = batch["attention_mask"].reshape(ids.shape)
    special = special_token_mask(ids, bert_tok.all_special_ids)
    keys = row_keys(ids, attn, torch.arange(ids.shape[0]) % 2, 42)
    _, chosen = kodiffcse_mask_tokens(ids, attn, special, 2, 3, 0, 0.3, keys)
    n = (~special & attn.bool()).sum(1)
    rows = n == 10
    freq = chosen[rows][:, 1:11].float().mean(0)  # k = 3 of n = 10 -> 0.3 each
    assert rows.sum() > 1000
    assert (freq - 0.3).abs().max() < 0.05
