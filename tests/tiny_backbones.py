"""Tiny random checkpoints of every supported backbone architecture, built offline from AutoConfig-style
configurations and tokenizers made on the fly with the `tokenizers` library (WordPiece, SentencePiece-style
Unigram with the `▁` metaspace, byte-level BPE with `Ġ`), each with its architecture's own special tokens."""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

from conftest import WORDS

LETTERS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:\"")
# PromptBERT's template words, so that prompts tokenise into words as with a real vocabulary
VOCAB_WORDS = sorted(set(WORDS) | {"this", "sentence", "means", "the", "of"})
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


def _wordpiece(specials: list[str], cls: str, sep: str, unk: str) -> Tokenizer:
    vocab = specials + VOCAB_WORDS + [c for c in LETTERS if c not in VOCAB_WORDS] + ["##" + c for c in LETTERS]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab.index(cls)), (sep, vocab.index(sep))])
    return tok


def _unigram(specials: list[str], cls: str, sep: str, unk: str) -> Tokenizer:
    """SentencePiece-style: words as `▁word` pieces, letters as fallback."""
    pieces = [(s, 0.0) for s in specials] + [("▁" + w, -1.0) for w in VOCAB_WORDS] + [("▁" + c, -3.0) for c in ":'\""] + [("▁", -2.0)]
    pieces += [(c, -5.0) for c in LETTERS]
    tok = Tokenizer(models.Unigram(pieces, unk_id=specials.index(unk)))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    ids = [p for p, _ in pieces]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, ids.index(cls)), (sep, ids.index(sep))])
    return tok


def _byte_bpe(specials: list[str], cls: str, sep: str) -> Tokenizer:
    from tokenizers import trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=1, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(VOCAB_WORDS)] * 3 + VOCAB_WORDS + [" : \" ' \""], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return tok


BERT_SPECIALS = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
ROBERTA_SPECIALS = dict(bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>", mask_token="<mask>",
                        cls_token="<s>", sep_token="</s>")


def _tokenizer(kind: str, specials: dict[str, str]) -> PreTrainedTokenizerFast:
    order = list(dict.fromkeys(specials[k] for k in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
                               if k in specials))
    if "bos_token" in specials:  # RoBERTa's order: <s> <pad> </s> <unk> <mask>
        order = list(dict.fromkeys([specials["bos_token"], specials["pad_token"], specials["eos_token"], specials["unk_token"],
                                    specials["mask_token"]]))
    cls, sep = specials["cls_token"], specials["sep_token"]
    if kind == "wordpiece":
        backend = _wordpiece(order, cls, sep, specials["unk_token"])
    elif kind == "unigram":
        backend = _unigram(order, cls, sep, specials["unk_token"])
    else:
        backend = _byte_bpe(order, cls, sep)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=128, **specials)
    return tok


# name: (model_type, tokenizer kind, special tokens, extra config)
ARCHITECTURES: dict[str, tuple[str, str, dict, dict]] = {
    "bert": ("bert", "wordpiece", BERT_SPECIALS, {}),
    "roberta": ("roberta", "byte_bpe", ROBERTA_SPECIALS, {"type_vocab_size": 1}),
    "xlm-roberta": ("xlm-roberta", "unigram", ROBERTA_SPECIALS, {"type_vocab_size": 1}),
    "deberta-v2": ("deberta-v2", "unigram", BERT_SPECIALS, {"relative_attention": True, "position_buckets": 16,
                                                            "max_relative_positions": 32, "pos_att_type": ["p2c", "c2p"],
                                                            "position_biased_input": False}),
    "modernbert": ("modernbert", "byte_bpe", BERT_SPECIALS, {"global_attn_every_n_layers": 2, "local_attention": 16}),
    "electra": ("electra", "wordpiece", BERT_SPECIALS, {"embedding_size": 16}),
    "distilbert": ("distilbert", "wordpiece", BERT_SPECIALS, {}),
    "mpnet": ("mpnet", "wordpiece", {**ROBERTA_SPECIALS, "unk_token": "[UNK]"}, {}),
    "albert": ("albert", "unigram", {**BERT_SPECIALS, "pad_token": "<pad>", "unk_token": "<unk>"}, {"embedding_size": 16}),
}


def tiny_config(name: str, tokenizer, dropout: float = 0.1, **overrides):
    model_type, _, _, extra = ARCHITECTURES[name]
    sizes = dict(SIZES)
    if model_type == "distilbert":
        sizes = dict(dim=32, n_layers=2, n_heads=2, hidden_dim=37, dropout=dropout, attention_dropout=dropout)
    elif model_type == "modernbert":
        sizes.update(embedding_dropout=dropout, mlp_dropout=dropout, attention_dropout=dropout)
    else:
        sizes.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    ids = {k: tokenizer.convert_tokens_to_ids(getattr(tokenizer, k.replace("_id", "")))
           for k in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id") if getattr(tokenizer, k.replace("_id", ""), None)}
    if model_type == "modernbert":  # its defaults are the real vocabulary's ids
        ids.update(bos_token_id=ids["cls_token_id"], eos_token_id=ids["sep_token_id"])
    positions = 130 if model_type in ("roberta", "xlm-roberta", "mpnet") else 128
    return AutoConfig.for_model(model_type, vocab_size=len(tokenizer), max_position_embeddings=positions,
                                **{**ids, **sizes, **extra, **overrides})


def build_tiny(name: str, path: Path, seed: int = 0, dropout: float = 0.1, **overrides) -> Path:
    """A random `name` checkpoint (safetensors, config, tokenizer) in path; overrides: config fields."""
    _, kind, specials, _ = ARCHITECTURES[name]
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(kind, specials)
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    AutoModel.from_config(tiny_config(name, tokenizer, dropout, **overrides)).save_pretrained(path)
    return path
