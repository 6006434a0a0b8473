"""PromptBERT pieces on tiny BERT / RoBERTa: templates, bad input, mask positions, denoising, conventions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clusterns.training.arguments import ModelArguments
from clusterns.training.data import ContrastiveCollator
from clusterns.modeling.encoder import CONFIG_NAME, EncoderConfig, SentenceEncoder
from clusterns.modeling.prompt import (
    BERT_TEMPLATES,
    ORIGINAL_DEFAULT_TEMPLATE,
    ROBERTA_TEMPLATES,
    PromptArguments,
    delta_inputs,
    enable_prompt,
    eval_settings,
    get_spec,
    mask_positions,
    prompt_config,
    PromptPooler,
    split_template,
    string_input,
    template_delta,
)

SENTENCES = ["a man is playing a guitar .", "dog", "two children are eating food on the table near the big red car", "a girl rides a horse"]
# Two templates whose prefixes have different token counts (for the shift-start switch).
SHORT_PREFIX = "*cls*_a_*sent_0*_means*mask*.*sep+*"
LONG_PREFIX = "*cls*_a_man_is_playing_*sent_0*_means*mask*.*sep+*"
WEIGHTS = torch.linspace(-1.0, 1.0, 64) ** 3


def make_encoder(model, template=None, template2=None, delta=True, **settings) -> SentenceEncoder:
    template = template or (ROBERTA_TEMPLATES[0] if "roberta" in str(model) else BERT_TEMPLATES[0])
    config = EncoderConfig(pooler_type="mask", projector="simcse_mlp", mlp_only_train=True,
                           prompt=prompt_config(template, template2, delta=delta, **settings))
    return SentenceEncoder.from_backbone(str(model), config, dropout_prob=0.0)


# ---- templates and flags -------------------------------------------------------------------------
def test_split_template_bert_and_roberta():
    assert split_template(BERT_TEMPLATES[0], "[MASK]", strip_prefix=False) == (' This sentence of "', '" means[MASK].')
    assert split_template(BERT_TEMPLATES[1], "[MASK]", strip_prefix=False) == (' This sentence : "', '" means[MASK].')
    # RoBERTa: the prefix's outer spaces are stripped ("remove empty block"), the suffix keeps its leading space
    assert split_template(ROBERTA_TEMPLATES[0], "<mask>", strip_prefix=True) == ("This sentence : '", " ' means<mask>.")
    assert split_template(ROBERTA_TEMPLATES[1], "<mask>", strip_prefix=True) == ("The sentence : '", " ' means<mask>.")


def test_string_input_of_the_final_test():
    t = BERT_TEMPLATES[0]
    assert string_input(t, "[MASK]", "a dog runs", True) == 'This sentence of "a dog runs." means[MASK].'
    for ending in ".?\"'":
        assert string_input(t, "[MASK]", "a dog runs" + ending, True) == f'This sentence of "a dog runs{ending}" means[MASK].'
    assert string_input(t, "[MASK]", "a dog runs", False) == 'This sentence of "a dog runs" means[MASK].'
    assert string_input(ROBERTA_TEMPLATES[0], "<mask>", "a dog runs", True) == "This sentence : ' a dog runs. ' means<mask>."


@pytest.mark.parametrize("template, problem", [
    ("*cls*_This_sentence_means*mask*.*sep+*", "exactly one sentence slot"),
    ("*cls*_*sent_0*_and_*sent_0*_means*mask*.*sep+*", "exactly one sentence slot"),
    ("*cls*_This_sentence_:_*sent_0*_means.*sep+*", "exactly one mask slot"),
    ("*cls*_*mask*_*sent_0*_means*mask*.*sep+*", "exactly one mask slot"),
    ("*cls* This *sent_0* means*mask*.*sep+*", "contains a space"),
])
def test_bad_templates_are_rejected_naming_the_flag(template, problem):
    with pytest.raises(ValueError, match=problem) as err:
        PromptArguments(mask_embedding_sentence_template=template)
    assert "--mask_embedding_sentence_template" in str(err.value)
    with pytest.raises(ValueError, match="--mask_embedding_sentence_different_template"):
        PromptArguments(mask_embedding_sentence_different_template=template)


def test_literal_mask_token_in_a_template_is_rejected(tiny_bert):
    encoder = make_encoder(tiny_bert, "*cls*_[MASK]_*sent_0*_means*mask*.*sep+*")
    with pytest.raises(ValueError, match="2 mask tokens"):
        get_spec(encoder)


def test_template_plus_max_seq_length_over_the_limit(tiny_bert):
    encoder = make_encoder(tiny_bert)
    encoder.pooling.check(encoder, 32)
    spec = get_spec(encoder)
    limit = 128  # the tiny BERT's position table
    encoder.pooling.check(encoder, limit - spec.t1.overhead)
    with pytest.raises(ValueError, match="--mask_embedding_sentence_template.*--max_seq_length"):
        encoder.pooling.check(encoder, limit - spec.t1.overhead + 1)


def test_switch_values_are_checked():
    with pytest.raises(ValueError, match="--prompt_templates"):
        PromptArguments(prompt_templates="bert")
    with pytest.raises(ValueError, match="--delta_prefix_source"):
        PromptArguments(delta_prefix_source="template2")


def test_template_defaults():
    # original: train_prompt.py's defaults, the RoBERTa "The sentence" template for both views on any backbone
    assert PromptArguments().resolve_templates(is_roberta=False) == (ORIGINAL_DEFAULT_TEMPLATE, ORIGINAL_DEFAULT_TEMPLATE)
    only_first = PromptArguments(mask_embedding_sentence_template=BERT_TEMPLATES[0])
    assert only_first.resolve_templates(False) == (BERT_TEMPLATES[0], ORIGINAL_DEFAULT_TEMPLATE)  # gotcha 2
    # per_backbone (corrected): the backbone's pair; a lone template 1 is used for both views
    assert PromptArguments(prompt_templates="per_backbone").resolve_templates(False) == BERT_TEMPLATES
    assert PromptArguments(prompt_templates="per_backbone").resolve_templates(True) == ROBERTA_TEMPLATES
    lone = PromptArguments(prompt_templates="per_backbone", mask_embedding_sentence_template=SHORT_PREFIX)
    assert lone.resolve_templates(False) == (SHORT_PREFIX, None)
    # '' = no different template
    assert PromptArguments(mask_embedding_sentence_different_template="").resolve_templates(False) == (ORIGINAL_DEFAULT_TEMPLATE, None)


def test_enable_prompt_sets_the_mask_pooler():
    args = ModelArguments()
    assert enable_prompt(args, PromptArguments()) is None and args.pooler_type == "cls"  # non-prompt: untouched
    assert enable_prompt(args, PromptArguments(mask_embedding_sentence=True)) is not None and args.pooler_type == "mask"
    assert enable_prompt(ModelArguments(pooler_type="mask"), None).mask_embedding_sentence
    with pytest.raises(ValueError, match="--pooler_type mask"):
        enable_prompt(ModelArguments(pooler_type="avg"), PromptArguments(mask_embedding_sentence=True))


# ---- inputs and mask positions -------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_roberta"])
def test_training_views_and_mask_position(backbone, request):
    model = request.getfixturevalue(backbone)
    is_roberta = backbone == "tiny_roberta"
    pair = ROBERTA_TEMPLATES if is_roberta else BERT_TEMPLATES
    encoder = make_encoder(model, *pair)
    tok = encoder.tokenizer
    spec = get_spec(encoder)
    prefix, suffix = split_template(pair[0], tok.mask_token, strip_prefix=is_roberta)
    assert list(spec.t1.prefix_ids) == tok.encode(prefix, add_special_tokens=False)
    assert list(spec.t1.suffix_ids) == tok.encode(suffix, add_special_tokens=False)
    max_len = 5
    features = spec.tokenize_function(tok, max_len)({"sent0": SENTENCES})
    for sentence, v1, v2 in zip(SENTENCES, features["sent0_ids"], features["sent1_ids"]):
        body = tok.encode(sentence, add_special_tokens=False)[:max_len]  # RoBERTa: first word without a leading space
        assert v1 == [spec.t1.cls_id, *spec.t1.prefix_ids, *body, *spec.t1.suffix_ids, spec.t1.sep_id]
        assert v2 == [spec.t2.cls_id, *spec.t2.prefix_ids, *body, *spec.t2.suffix_ids, spec.t2.sep_id]
    if is_roberta:
        first = tok.convert_ids_to_tokens(features["sent0_ids"][0][1 + len(spec.t1.prefix_ids)])
        assert not first.startswith("\u0120")  # no "Ġ" on the sentence's first token
    rows = [dict(zip(features, values)) for values in zip(*features.values())]
    batch = ContrastiveCollator(pad_token_id=tok.pad_token_id, num_views=2)(rows)
    flat = batch["input_ids"].view(-1, batch["input_ids"].shape[-1])
    lengths = batch["attention_mask"].view(flat.shape[0], -1).sum(-1)
    positions = mask_positions(flat, tok.mask_token_id)
    assert (flat.gather(1, positions[:, None]).squeeze(1) == tok.mask_token_id).all()
    expected = lengths - 1 - len(spec.t1.suffix_ids) + spec.t1.suffix_ids.index(tok.mask_token_id)
    assert positions.tolist() == expected.tolist()


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_roberta"])
def test_mask_position_ignores_a_mask_string_inside_the_sentence(backbone, request):
    encoder = make_encoder(request.getfixturevalue(backbone)).eval()
    tok = encoder.tokenizer
    encoder.pooling.convention = "dev"
    ids = encoder.tokenize([f"a {tok.mask_token} dog"])["input_ids"][0]
    assert ids.count(tok.mask_token_id) == 2
    position = mask_positions(torch.tensor([ids]), tok.mask_token_id)
    assert position.item() == len(ids) - 1 - len(get_spec(encoder).t1.suffix_ids) + get_spec(encoder).t1.suffix_ids.index(tok.mask_token_id)
    assert np.isfinite(encoder.encode([f"a {tok.mask_token} dog"])).all()
    # a template whose mask is in the prefix: the first occurrence
    encoder2 = make_encoder(request.getfixturevalue(backbone), "*cls*_a*mask*_means_*sent_0*_.*sep+*").eval()
    encoder2.pooling.convention = "dev"
    ids = encoder2.tokenize([f"a {tok.mask_token} dog"])["input_ids"][0]
    assert mask_positions(torch.tensor([ids]), tok.mask_token_id, last=False).item() == 1 + get_spec(encoder2).t1.prefix_ids.index(tok.mask_token_id)


def test_eval_inputs_per_convention_roberta(tiny_roberta):
    encoder = make_encoder(tiny_roberta).eval()
    tok = encoder.tokenizer
    spec = get_spec(encoder)
    encoder.pooling.convention = "dev"
    dev = encoder.tokenize(["a dog runs"])["input_ids"][0]
    assert dev == spec.t1.wrap(tok.encode("a dog runs", add_special_tokens=False))
    for convention in ("test", "original"):  # faithful defaults: the final test is evaluation_prompt.py's string
        encoder.pooling.convention = convention
        test = encoder.tokenize(["a dog runs"])["input_ids"][0]
        assert test == tok.encode("This sentence : ' a dog runs. ' means<mask>.")
        assert test != dev  # period appended, and the sentence's first word gets its leading space
    assert eval_settings(spec.settings, "test").delta is False and eval_settings(spec.settings, "dev").delta is True
    with pytest.raises(ValueError, match="prompt convention"):  # refused when set, before any encode
        encoder.pooling.convention = "sideways"


def test_eval_inputs_are_truncated_to_fit(tiny_bert):
    encoder = make_encoder(tiny_bert).eval()
    spec = get_spec(encoder)
    long = " ".join(["dog"] * 300)
    for convention in ("dev", "original"):
        encoder.pooling.convention = convention
        ids = encoder.tokenize([long])["input_ids"][0]
        assert len(ids) <= 128 and ids.count(encoder.tokenizer.mask_token_id) == 1
        assert np.isfinite(encoder.encode([long])).all()
    encoder.pooling.convention = "dev"
    assert len(encoder.tokenize([long], max_seq_length=7)["input_ids"][0]) == spec.t1.overhead + 7


# ---- template denoising --------------------------------------------------------------------------
def test_delta_copies_shapes_and_position_shifts(tiny_bert):
    encoder = make_encoder(tiny_bert, SHORT_PREFIX, LONG_PREFIX).eval()
    spec = get_spec(encoder)
    t1, t2 = spec.t1, spec.t2
    assert len(t2.prefix_ids) > len(t1.prefix_ids)
    ids, positions = delta_inputs(t1, 6, spec.shift_start(t1))
    assert ids.shape == positions.shape == (6, t1.length) and (ids == torch.tensor(t1.empty_ids)).all()
    start = 1 + len(t1.prefix_ids)
    for l in range(6):
        assert positions[l, :start].tolist() == list(range(start))
        assert positions[l, start:].tolist() == [p + l for p in range(start, t1.length)]
    # template 2 shifts after template 1's prefix by default (original), after its own with own_template
    assert spec.shift_start(t2) == start
    own = get_spec(make_encoder(tiny_bert, SHORT_PREFIX, LONG_PREFIX, delta_prefix_source="own_template"))
    assert own.shift_start(own.t2) == 1 + len(t2.prefix_ids)
    # delta[l] is the mask state of the empty template at positions shifted by l
    with torch.no_grad():
        delta = template_delta(encoder.backbone, t1, 6, start)
        assert delta.shape == (6, encoder.hidden_size)
        for l in (0, 3, 5):
            pos = torch.arange(t1.length)
            pos[start:] += l
            ids = torch.tensor([t1.empty_ids])  # full attention, said explicitly (transformers >= 5.25 would read the
            # jumping positions of a mask-less call as packed sequences)
            out = encoder.backbone(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=pos[None]).last_hidden_state
            torch.testing.assert_close(delta[l], out[0, t1.empty_mask_index])
        assert not torch.allclose(delta[0], delta[5])
        # every copy attends across the shift (no packed-sequence reading of the positions): its mask state
        # changes when a token before the shift changes
        ids, positions = delta_inputs(t1, 2, start)
        changed = ids.clone()
        changed[:, 1] = (changed[:, 1] + 1) % encoder.tokenizer.vocab_size
        outs = [encoder.backbone(input_ids=x, attention_mask=torch.ones_like(x), position_ids=positions).last_hidden_state
                for x in (ids, changed)]
        assert not torch.allclose(outs[0][:, t1.empty_mask_index], outs[1][:, t1.empty_mask_index])
        flat = template_delta(encoder.backbone, t1, 6, start, no_position=True)  # --..._delta_no_position
        torch.testing.assert_close(flat, flat[:1].expand(6, -1))
    assert spec.train_copies(t1) == 50


def _views(encoder, sentences):
    spec = get_spec(encoder)
    features = spec.tokenize_function(encoder.tokenizer, 32)({"sent0": sentences})
    rows = [dict(zip(features, values)) for values in zip(*features.values())]
    batch = ContrastiveCollator(pad_token_id=encoder.tokenizer.pad_token_id, num_views=2)(rows)
    return batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize("source", ["template1", "own_template"])
def test_training_subtracts_each_views_delta_at_the_sentence_length(tiny_bert, source):
    encoder = make_encoder(tiny_bert, SHORT_PREFIX, LONG_PREFIX, delta_prefix_source=source).train()  # dropout 0
    spec = get_spec(encoder)
    input_ids, attention = _views(encoder, SENTENCES)
    b, v, L = input_ids.shape
    with torch.no_grad():
        pooled = encoder.pooled(input_ids.view(-1, L), attention.view(-1, L), num_views=v).view(b, v, -1)
        hidden = encoder.backbone(input_ids=input_ids.view(-1, L), attention_mask=attention.view(-1, L)).last_hidden_state
        h = hidden[torch.arange(b * v), mask_positions(input_ids.view(-1, L), spec.mask_id)].view(b, v, -1)
        for k, template in enumerate((spec.t1, spec.t2)):
            delta = template_delta(encoder.backbone, template, 50, spec.shift_start(template))
            lengths = attention[:, k].sum(-1) - template.length
            assert lengths.tolist() == [len(encoder.tokenizer.encode(s, add_special_tokens=False)) for s in SENTENCES]
            torch.testing.assert_close(pooled[:, k], h[:, k] - delta[lengths])


def test_delta_has_gradient_in_training_and_none_in_evaluation(tiny_bert):
    def train_grads(freeze):
        encoder = make_encoder(tiny_bert, delta_freeze=freeze).train()
        input_ids, attention = _views(encoder, SENTENCES)
        L = input_ids.shape[-1]
        out = encoder.pooled(input_ids.view(-1, L), attention.view(-1, L), num_views=2)
        (out * WEIGHTS[: out.shape[-1]]).sum().backward()  # (a plain sum of LayerNorm outputs has ~no gradient)
        return encoder.backbone.embeddings.position_embeddings.weight.grad.clone()

    assert not torch.allclose(train_grads(False), train_grads(True))  # the training delta is differentiated

    def eval_grads(**settings):
        encoder = make_encoder(tiny_bert, **settings).eval()
        encoder.pooling.convention = "dev"
        batch = encoder.tokenizer.pad(encoder.tokenize(SENTENCES), return_tensors="pt")
        out = encoder(batch["input_ids"], batch["attention_mask"])
        (out * WEIGHTS[: out.shape[-1]]).sum().backward()
        return out.detach(), encoder.backbone.embeddings.position_embeddings.weight.grad.clone(), encoder

    with_delta, grad, encoder = eval_grads()
    without_delta, grad_no_delta, _ = eval_grads(delta_no_delta_eval=True)
    assert not torch.allclose(with_delta, without_delta)
    torch.testing.assert_close(grad, grad_no_delta)  # the evaluation delta is a constant
    delta = next(iter(get_spec(encoder).eval_cache.values()))
    assert not delta.requires_grad and delta.shape[0] == min(128, 128 - get_spec(encoder).t1.length + 1)


def test_eval_delta_cache_follows_the_weights(tiny_bert):
    encoder = make_encoder(tiny_bert).eval()
    encoder.pooling.convention = "dev"
    before = encoder.encode(SENTENCES[:2])
    with torch.no_grad():
        encoder.backbone.embeddings.word_embeddings.weight.mul_(1.5)
    after_direct = encoder.encode(SENTENCES[:2])
    fresh = make_encoder(tiny_bert).eval()
    fresh.pooling.convention = "dev"
    with torch.no_grad():
        fresh.backbone.embeddings.word_embeddings.weight.mul_(1.5)
    np.testing.assert_allclose(after_direct, fresh.encode(SENTENCES[:2]), atol=1e-6)
    assert not np.allclose(before, after_direct)


# ---- conventions and checkpoints -----------------------------------------------------------------
def test_checkpoint_records_the_prompt_and_conventions(tiny_bert, tmp_path):
    encoder = make_encoder(tiny_bert).eval()
    encoder.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert saved["pooler_type"] == "mask" and saved["prompt"]["template"] == BERT_TEMPLATES[0] and saved["prompt"]["delta"]
    dev = encoder.encode(SENTENCES)  # an in-memory (training) encoder evaluates as the dev selection
    loaded = SentenceEncoder.from_pretrained(tmp_path)
    assert loaded.pooling.convention == "test"
    np.testing.assert_allclose(SentenceEncoder.from_pretrained(tmp_path, prompt_convention="dev").encode(SENTENCES), dev, atol=1e-6)
    np.testing.assert_allclose(SentenceEncoder.from_pretrained(tmp_path, prompt_convention="consistent").encode(SENTENCES), dev, atol=1e-6)
    test = loaded.encode(SENTENCES)
    assert not np.allclose(test, dev, atol=1e-4)
    # the original final test by hand: the whole string, raw mask state
    tok = loaded.tokenizer
    ids = tok(string_input(BERT_TEMPLATES[0], tok.mask_token, SENTENCES[1], True), return_tensors="pt")
    with torch.no_grad():
        hidden = loaded.backbone(**ids).last_hidden_state[0]
    np.testing.assert_allclose(test[1], hidden[ids["input_ids"][0].tolist().index(tok.mask_token_id)].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="prompt convention"):
        SentenceEncoder.from_pretrained(tmp_path, prompt_convention="final")


def test_corrected_test_switches_equal_the_selection(tiny_bert, tmp_path):
    encoder = make_encoder(tiny_bert, test_delta=True, test_add_period=False).eval()
    dev = encoder.encode(SENTENCES)
    encoder.save_pretrained(tmp_path)
    np.testing.assert_allclose(SentenceEncoder.from_pretrained(tmp_path).encode(SENTENCES), dev, atol=1e-6)
    original = SentenceEncoder.from_pretrained(tmp_path, prompt_convention="original").encode(SENTENCES)
    assert not np.allclose(original, dev, atol=1e-4)


def test_plain_checkpoint_with_a_template(tiny_roberta):
    encoder = SentenceEncoder.from_pretrained(tiny_roberta, pooler="mask", prompt=prompt_config(ROBERTA_TEMPLATES[0]))
    assert encoder.config.pooler_type == "mask" and encoder.pooling.convention == "test"
    emb = encoder.encode(SENTENCES)
    assert emb.shape == (4, encoder.hidden_size) and np.isfinite(emb).all()


def test_non_prompt_encoder_is_untouched(tiny_bert):
    encoder = SentenceEncoder.from_backbone(str(tiny_bert), EncoderConfig(pooler_type="cls", projector="simcse_mlp"))
    assert encoder.tokenize(["a dog"])["input_ids"] == [encoder.tokenizer.encode("a dog")]
    with pytest.raises(ValueError, match="prompt settings"):  # the mask pooler without the settings it needs
        PromptPooler().pooled(encoder, torch.tensor([[2, 3]]), torch.tensor([[1, 1]]))


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_roberta"])
def test_original_convention_is_the_raw_mask_state_without_delta(backbone, request):
    """--prompt_convention original on a delta-trained encoder: evaluation_prompt.py's string input and the raw
    last-layer state at its mask token, no template delta (dev subtracts it)."""
    encoder = make_encoder(request.getfixturevalue(backbone), delta=True).eval()
    tok = encoder.tokenizer
    template = get_spec(encoder).t1
    sentence = "a dog runs"
    ids = tok.encode(string_input(template.text, tok.mask_token, sentence, True))  # the period is appended
    assert tok.decode(ids).count("runs.") == 1
    with torch.no_grad():
        hidden = encoder.backbone(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).last_hidden_state
    expected = hidden[0, ids.index(tok.mask_token_id)]
    encoder.pooling.convention = "original"
    assert np.allclose(encoder.encode([sentence])[0], expected.numpy(), atol=1e-5)
    encoder.pooling.convention = "dev"  # template ids around the sentence ids, minus the delta
    dev = encoder.encode([sentence])[0]
    assert not np.allclose(dev, expected.numpy(), atol=1e-3)


def test_roberta_mask_position_and_delta_by_hand(tiny_roberta):
    """One RoBERTa input, checked by hand: the template ids around the sentence (no leading space on its first
    word), the mask at a literal index, and the pooled vector = that state - the empty template's mask state with
    the position ids written out (explicit, starting at 0 as the original passes them; shifted by the sentence
    length after the prefix), in training (view 1) and in dev evaluation."""
    encoder = make_encoder(tiny_roberta, *ROBERTA_TEMPLATES)  # dropout 0
    tok = encoder.tokenizer
    spec = get_spec(encoder)
    sentence = "a dog runs"
    features = spec.tokenize_function(tok, 32)({"sent0": [sentence]})
    view1 = features["sent0_ids"][0]
    # the tiny BPE vocabulary spells the template in pieces; what matters is the order and the first word's space
    assert tok.convert_ids_to_tokens(view1) == [
        "<s>", "T", "h", "is", "Ġs", "e", "n", "t", "e", "n", "c", "e", "Ġ", ":", "Ġ", "'",  # prefix "This sentence : '"
        "a", "Ġd", "og", "Ġrun", "s",  # the sentence: 5 tokens, "a" without "Ġ"
        "Ġ", "'", "Ġm", "e", "an", "s", "<mask>", ".", "</s>",  # suffix " ' means<mask>."
    ]
    assert mask_positions(torch.tensor([view1]), tok.mask_token_id).item() == 27
    empty = spec.t1.empty_ids
    assert tok.convert_ids_to_tokens(empty)[15:18] == ["'", "Ġ", "'"] and spec.t1.empty_mask_index == 22
    # positions 0..15 (CLS + prefix), then 16..24 shifted by the sentence length 5
    positions = torch.tensor([list(range(16)) + [21, 22, 23, 24, 25, 26, 27, 28, 29]])
    with torch.no_grad():
        empty_state = encoder.backbone(input_ids=torch.tensor([empty]), attention_mask=torch.ones_like(positions),
                                       position_ids=positions).last_hidden_state[0, 22]
        state = encoder.backbone(input_ids=torch.tensor([view1]), attention_mask=torch.ones(1, 30, dtype=torch.long)).last_hidden_state[0, 27]
        expected = state - empty_state
        encoder.train()
        views = torch.tensor([view1, view1])  # two copies of view 1 (the shapes of one sentence's pair)
        pooled = encoder.pooled(views, torch.ones_like(views), num_views=2)
        torch.testing.assert_close(pooled[0], expected, atol=1e-5, rtol=1e-5)
    encoder.eval()
    encoder.pooling.convention = "dev"
    assert encoder.tokenize([sentence])["input_ids"][0] == view1
    np.testing.assert_allclose(encoder.encode([sentence])[0], expected.numpy(), atol=1e-5)
    assert not np.allclose(expected.numpy(), state.numpy(), atol=1e-3)  # the delta is not zero
