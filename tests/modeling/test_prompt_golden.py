"""PromptBERT inputs, template denoising and the prompt ClusterNS forward against shared/golden/prompt.json.

The golden vectors come from ClusterNS's train_prompt.py / prompt_bert/models.py (transformers 4.2.1);
the tiny BERT's weights are in the file and run here as a current BertModel with eager attention.
"""
from __future__ import annotations

import pytest
import torch

from clusterns.training.arguments import ModelArguments
from clusterns.training.data import ContrastiveCollator
from clusterns.modeling.encoder import EncoderConfig, SentenceEncoder
from clusterns.training.model import ContrastiveModel
from clusterns.objectives.functional import cosine_matrix, infonce_loss
from clusterns.objectives.infonce import InfoNCEObjective
from clusterns.modeling.prompt import delta_inputs, get_spec, mask_positions, prompt_config, split_template, template_delta
from conftest import golden_case

F64 = torch.float64


def close(got, exp, atol=1e-9, rtol=1e-6):
    """golden/README.md float64 criterion: |got - exp| <= atol + rtol * |exp| per element."""
    got = torch.as_tensor(got, dtype=F64)
    exp = torch.as_tensor(exp, dtype=F64)
    assert got.shape == exp.shape, (got.shape, exp.shape)
    bad = (got - exp).abs() > atol + rtol * exp.abs()
    assert not bool(bad.any()), f"max abs deviation {(got - exp).abs().max().item():.3e}"


@pytest.fixture(scope="module")
def ids_case():
    return golden_case("prompt", "prompt_template_ids_bert_pair")


@pytest.fixture(scope="module")
def golden_tokenizer(ids_case, tmp_path_factory):
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("golden-vocab")
    (folder / "vocab.txt").write_text("\n".join(ids_case["params"]["vocab"]) + "\n")
    tok = BertTokenizerFast.from_pretrained(str(folder), do_lower_case=ids_case["params"]["do_lower_case"])
    special = ids_case["params"]["special_ids"]
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        special["pad"], special["cls"], special["sep"], special["mask"])
    return tok


def golden_encoder(tokenizer, ids_case, forward_case=None, delta=True) -> SentenceEncoder:
    from transformers import BertConfig, BertModel

    if forward_case is None:
        forward_case = golden_case("prompt", "prompt_forward_tiny_bert")
    config = BertConfig(**forward_case["params"]["bert_config"])
    config._attn_implementation = "eager"
    backbone = BertModel(config, add_pooling_layer=False).to(F64)
    state = {k: torch.tensor(v, dtype=F64) for k, v in forward_case["inputs"]["bert_state_dict"].items() if not k.startswith("pooler.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    prompt = prompt_config(ids_case["params"]["template"], ids_case["params"]["template2"], delta=delta,
                           max_seq_length=ids_case["params"]["max_seq_length"])
    encoder = SentenceEncoder(backbone, tokenizer, EncoderConfig(pooler_type="mask", projector="simcse_mlp",
                                                                  mlp_only_train=True, prompt=prompt))
    encoder.projector.to(F64)
    mlp = forward_case["inputs"]["mlp_state_dict"]
    with torch.no_grad():
        encoder.projector.dense.weight.copy_(torch.tensor(mlp["dense.weight"], dtype=F64))
        encoder.projector.dense.bias.copy_(torch.tensor(mlp["dense.bias"], dtype=F64))
    return encoder


def test_template_ids_bert_pair(ids_case, golden_tokenizer):
    p, exp = ids_case["params"], ids_case["expected"]
    mask = golden_tokenizer.mask_token
    assert split_template(p["template"], mask, strip_prefix=False) == (exp["prefix_string"], exp["suffix_string"])
    assert split_template(p["template2"], mask, strip_prefix=False) == (exp["prefix_string2"], exp["suffix_string2"])

    encoder = golden_encoder(golden_tokenizer, ids_case)
    spec = get_spec(encoder)
    t1, t2 = spec.t1, spec.t2
    assert [t1.cls_id, *t1.prefix_ids] == exp["prefix_ids_with_cls"]
    assert [*t1.suffix_ids, t1.sep_id] == exp["suffix_ids_with_sep"]
    assert [t2.cls_id, *t2.prefix_ids] == exp["prefix2_ids_with_cls"]
    assert [*t2.suffix_ids, t2.sep_id] == exp["suffix2_ids_with_sep"]
    assert list(t1.prefix_ids) == exp["template_bs_ids"] and list(t1.suffix_ids) == exp["template_es_ids"]
    assert list(t1.empty_ids) == exp["mask_embedding_template"]
    assert list(t2.empty_ids) == exp["mask_embedding_template2"]

    sentences = ids_case["inputs"]["sentences"]
    assert golden_tokenizer(sentences, add_special_tokens=False)["input_ids"] == exp["sentence_token_ids"]
    # the training pipeline: datasets.map function + collator
    features = spec.tokenize_function(golden_tokenizer, p["max_seq_length"])({"sent0": sentences})
    rows = [dict(zip(features, values)) for values in zip(*features.values())]
    batch = ContrastiveCollator(pad_token_id=golden_tokenizer.pad_token_id, num_views=2)(rows)
    assert batch["input_ids"].tolist() == exp["input_ids"]
    assert batch["attention_mask"].tolist() == exp["attention_mask"]


def test_template_ids_truncate_the_sentence_not_the_template(ids_case, golden_tokenizer):
    encoder = golden_encoder(golden_tokenizer, ids_case)
    spec = get_spec(encoder)
    out = spec.tokenize_function(golden_tokenizer, 3)({"sent0": ids_case["inputs"]["sentences"]})
    exp = ids_case["expected"]
    assert out["sent0_ids"][0] == exp["prefix_ids_with_cls"] + exp["sentence_token_ids"][0][:3] + exp["suffix_ids_with_sep"]
    assert out["sent1_ids"][1] == exp["prefix2_ids_with_cls"] + exp["sentence_token_ids"][1][:3] + exp["suffix2_ids_with_sep"]


def test_denoising_delta_indices(ids_case, golden_tokenizer):
    case = golden_case("prompt", "prompt_denoising_delta_indices")
    p, inp, exp = case["params"], case["inputs"], case["expected"]
    encoder = golden_encoder(golden_tokenizer, ids_case)
    spec = get_spec(encoder)
    assert list(spec.t1.empty_ids) == inp["mask_embedding_template"]
    assert list(spec.t2.empty_ids) == inp["mask_embedding_template2"]
    assert len(spec.t1.prefix_ids) == p["template_prefix_len_for_shift"]
    copies = spec.train_copies(spec.t1)
    assert copies == p["delta_length"] == spec.train_copies(spec.t2)
    for k, template in ((1, spec.t1), (2, spec.t2)):
        ids, positions = delta_inputs(template, copies, spec.shift_start(template))
        assert ids.tolist() == exp[f"delta_input_ids_template{k}"]
        assert positions.tolist() == exp[f"delta_position_ids_template{k}"]
        assert template.empty_mask_index == exp[f"delta_mask_position_template{k}"]
        assert template.length == exp[f"template_len{k}"]
    attention = torch.tensor(inp["attention_mask"])
    input_ids = torch.tensor(inp["input_ids"])
    for view, template in ((0, spec.t1), (1, spec.t2)):
        lengths = attention[:, view].sum(-1) - template.length
        assert lengths.tolist() == exp[f"sentence_lengths_view{view + 1}"] == exp[f"delta_row_used_view{view + 1}"]
        # the mask position found in each training view is the template's mask
        positions = mask_positions(input_ids[:, view], spec.mask_id)
        assert (input_ids[:, view].gather(1, positions[:, None]) == spec.mask_id).all()
        assert positions.tolist() == (attention[:, view].sum(-1) - len(template.suffix_ids) - 1 + template.suffix_ids.index(spec.mask_id)).tolist()


def test_forward_tiny_bert(ids_case, golden_tokenizer):
    case = golden_case("prompt", "prompt_forward_tiny_bert")
    inp, exp, p = case["inputs"], case["expected"], case["params"]
    encoder = golden_encoder(golden_tokenizer, ids_case, case)
    spec = get_spec(encoder)
    with torch.no_grad():
        for k, template in ((1, spec.t1), (2, spec.t2)):
            delta = template_delta(encoder.backbone, template, spec.train_copies(template), spec.shift_start(template))
            close(delta, exp[f"delta_template{k}"])
    input_ids = torch.tensor(inp["input_ids"])
    attention = torch.tensor(inp["attention_mask"])
    with torch.no_grad():
        hidden = encoder.backbone(input_ids=input_ids.view(4, -1), attention_mask=attention.view(4, -1)).last_hidden_state
        h = hidden[torch.arange(4), mask_positions(input_ids.view(4, -1), spec.mask_id)].view(2, 2, -1)
    close(h, exp["mask_hidden"])

    # the training forward through the framework: ContrastiveModel -> encoder.pooled(num_views) -> MLP
    encoder.train()  # dropout is 0: deterministic
    model_args = ModelArguments(temp=p["temp"], pooler_type="mask", mlp_only_train=True)
    model = ContrastiveModel(encoder, InfoNCEObjective(model_args))
    views = model.encode_views(input_ids, attention)
    close(views.pooled[:, 0].detach(), exp["denoised_view1"])
    close(views.pooled[:, 1].detach(), exp["denoised_view2"])
    z1, z2 = views.local[:, 0], views.local[:, 1]
    close(z1.detach(), exp["z1"])
    close(z2.detach(), exp["z2"])
    logits = cosine_matrix(z1, z2) / p["temp"]
    close(logits.detach(), exp["logits"])
    close(infonce_loss(logits).detach(), exp["loss"])
    # the objective's own loss (fp32 logits by design) within the float32 criterion
    out = model(input_ids=input_ids, attention_mask=attention)
    close(out["loss"].detach(), exp["loss"], atol=1e-5, rtol=1e-4)
    out["loss"].backward()
    assert encoder.backbone.embeddings.word_embeddings.weight.grad is not None


def test_dev_evaluation_uses_template1_and_128_copy_delta(ids_case, golden_tokenizer):
    """In-training dev evaluation (sentemb_forward): template 1 around the sentence ids, delta[len] from
    128 shifted copies under no_grad, no MLP (mlp_only_train)."""
    case = golden_case("prompt", "prompt_forward_tiny_bert")
    exp = case["expected"]
    encoder = golden_encoder(golden_tokenizer, ids_case, case).eval()
    encoder.pooling.convention = "dev"
    sentences = ids_case["inputs"]["sentences"]
    features = encoder.tokenize(sentences)
    assert features["input_ids"] == [row[0][: sum(m[0])] for row, m in zip(ids_case["expected"]["input_ids"], ids_case["expected"]["attention_mask"])]
    batch = golden_tokenizer.pad(features, return_tensors="pt")
    emb = encoder(batch["input_ids"], batch["attention_mask"])  # in float64, gradient mode on
    assert emb.dtype == F64
    # delta rows < 50 are the same with 128 copies (dropout 0), so view 1's denoised state is reproduced
    close(emb.detach(), exp["denoised_view1"])
    close(encoder.encode(sentences), exp["denoised_view1"], atol=1e-5, rtol=1e-4)  # encode() returns float32
    cache = get_spec(encoder).eval_cache
    assert len(cache) == 1
    delta = next(iter(cache.values()))
    # 128 copies, capped where the shifted positions would leave the 128-row position table (the original crashes)
    assert delta.shape == (min(128, 128 - 10 + 1), 16) and not delta.requires_grad  # no gradient in evaluation
