"""A GPU-ready training step: no operator that makes the host wait for the device, per optimizer step, outside the
logging steps (clusterns/training/host_syncs.py counts them on the CPU, where they are the same operators).

The step's parts that used to wait: the packing index (`nonzero` on the device: now the collator's, host-computed),
transformers 5's check whether the padding mask is all ones (the packed backbone runs without it; DiffCSE's padded
discriminator and PromptBERT's template-delta pass get their masks ready-made), HF's --logging_nan_inf_filter (off by default), the non-finite verdict (--nan_check
deferred: read at logging steps), the MLM head's selected tokens (the collator's). The DDP gathers' size exchange is
tested under torchrun in test_ddp_equivalence.py. ClusterNS reads its start decision once per step until clustering
starts (the original's rule, kept)."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

from clusterns.modeling.backbones import ready_padding_mask
from clusterns.modeling.packing import (LAYERS_RETURN_TUPLES, TokenLayout, host_token_layout, keeping_token_layouts, known_index,
                                        known_token_layouts, token_layouts)
from clusterns.training.host_syncs import CountHostSyncsCallback, HostSyncCounter
from clusterns.training.run import build_run
from clusterns.training.data import ContrastiveCollator, TOKEN_LAYOUTS
from clusterns.objectives.masked_lm import IGNORE_INDEX, MLM_LABELS

STEPS = 4
# The counts are transformers 5's: 4.x has syncs of its own in the backbone (its mask preparation, its padding warning).
needs_transformers_5 = pytest.mark.skipif(LAYERS_RETURN_TUPLES, reason="the sync-free step is transformers 5's")


@pytest.fixture(scope="module")
def generator(tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("generator")
    cfg = AutoConfig.from_pretrained(str(tiny_bert))
    cfg.num_hidden_layers = 1
    torch.manual_seed(1)
    AutoModelForMaskedLM.from_config(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(out)
    return out


def train_counting(model, corpus, out, *flags) -> CountHostSyncsCallback:
    counter = CountHostSyncsCallback()
    argv = ["--model_name_or_path", model, "--train_file", corpus, "--output_dir", out, "--per_device_train_batch_size", 8,
            "--max_steps", STEPS, "--use_cpu", "--logging_steps", 100, "--save_strategy", "no", "--report_to", "none",
            "--disable_tqdm", "true", "--dataloader_num_workers", 0, "--seed", 3, *flags]
    run = build_run([str(a) for a in argv], callbacks=[counter])
    run.trainer.train()
    assert len(counter.per_step) == STEPS
    return counter


def where(counter: CountHostSyncsCallback) -> str:
    return "\n".join(f"{name}:\n{stack}" for name, stack in counter.counter.where[:3])


CONFIGS = {
    "infonce": ["--objective", "infonce"],
    "mixcse": ["--objective", "mixcse", "--lambdas", "0.2"],
    "infonce-mlm-cached": ["--objective", "infonce", "--do_mlm", "--mini_batch_size", 4],
    "diffcse": ["--objective", "diffcse", "--generator_name", "{generator}", "--batchnorm"],
    "diffcse-cached": ["--objective", "diffcse", "--generator_name", "{generator}", "--batchnorm", "--mini_batch_size", 4],
    "prompt": ["--objective", "infonce", "--pooler_type", "mask"],
    "prompt-delta": ["--objective", "infonce", "--pooler_type", "mask", "--mask_embedding_sentence_delta"],
    "skip-policy": ["--objective", "infonce", "--nan_policy", "skip"],
}


@needs_transformers_5
@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_host_sync_per_step_with_deferred_check(name, tiny_bert, tiny_corpus, generator, tmp_path):
    flags = [str(generator) if f == "{generator}" else f for f in CONFIGS[name]]
    counter = train_counting(tiny_bert, tiny_corpus, tmp_path / "out", *flags, "--nan_check", "deferred")
    assert counter.per_step == [0] * STEPS, where(counter)


@needs_transformers_5
def test_every_step_check_is_the_one_sync(tiny_bert, tiny_corpus, tmp_path):
    """The CPU's default (--nan_check auto: every_step off CUDA): the verdict read before each update, nothing else."""
    counter = train_counting(tiny_bert, tiny_corpus, tmp_path / "out")
    assert counter.per_step == [1] * STEPS, where(counter)
    assert dict(counter.counter.counts) == {"_local_scalar_dense": STEPS}


@needs_transformers_5
def test_clusterns_reads_only_its_start_decision(tiny_bert, tiny_corpus, tmp_path):
    """ClusterNS decides on the host whether clustering starts (the original's rule), once per step until it does;
    clustering itself (assignments, centroid updates) adds none."""
    counter = train_counting(tiny_bert, tiny_corpus, tmp_path / "out", "--objective", "clusterns", "--kmeans", 4,
                             "--kmean_cosine", 1.0, "--bml_weight", 0.1, "--nan_check", "deferred")
    assert counter.per_step[0] == 1 and counter.per_step[1:] == [0] * (STEPS - 1), where(counter)


def test_the_counter_sees_the_syncing_operators():
    x = torch.tensor([0.0, 1.0, 2.0])
    with HostSyncCounter() as counter:
        float(x.sum())
        bool(x.any())
        x.nonzero()
        x[x > 0]
        x.masked_select(x > 0)
        torch.unique(x)
        y = x * 2 + 1  # none of these
        y.index_select(0, torch.tensor([0, 2]))
        torch.nonzero_static(x, size=2)
    assert counter.counts == {"_local_scalar_dense": 2, "nonzero": 1, "index": 1, "masked_select": 1, "_unique2": 1}
    with HostSyncCounter() as counter:
        with counter.pause():
            float(x.sum())
    assert counter.total == 0


# ---- the host-computed layouts ----------------------------------------------------------------------
def test_host_token_layout_and_views_of_its_rows():
    mask = torch.tensor([[[1, 1, 0], [1, 0, 0]], [[1, 1, 1], [0, 0, 0]], [[1, 0, 0], [1, 1, 0]]])  # [B=3, V=2, L=3]
    index, ends = host_token_layout(mask)
    flat = mask.reshape(-1, 3)
    assert index.tolist() == flat.reshape(-1).nonzero().squeeze(1).tolist() == [0, 1, 3, 6, 7, 8, 12, 15, 16]
    assert ends == [2, 3, 6, 6, 7, 9]
    (layout,) = token_layouts({"attention_mask": mask}, {"attention_mask": (index, ends)})
    views = (mask.reshape(-1, 3), mask[1:].reshape(-1, 3), mask[1:2].reshape(-1, 3), mask[2:].reshape(-1, 3))
    with known_token_layouts([layout]), HostSyncCounter() as counter:
        found = [known_index(view) for view in views]
    assert counter.total == 0  # all four read from the layout
    for view, index_of_view in zip(views, found):
        assert index_of_view.tolist() == view.reshape(-1).nonzero().squeeze(1).tolist()
    # not a run of whole rows of the layout's tensor, or another tensor: nonzero() as before
    other = mask.reshape(-1, 3).clone()
    assert layout.index_for(other) is None and layout.index_for(mask[:, 0]) is None and layout.index_for(mask.reshape(-1, 6)) is None
    with known_token_layouts([layout]), HostSyncCounter() as counter:
        assert known_index(other).tolist() == index.tolist()
    assert counter.counts == {"nonzero": 1}


def test_layouts_outlive_the_forward_for_replays():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    layout = TokenLayout(mask=mask, index=torch.tensor([0, 1, 3]), row_ends=(2, 3))
    with known_token_layouts([layout]):
        replay = keeping_token_layouts(lambda m: layout.index_for(m) is not None and known_index(m).tolist())
    assert replay(mask) == [0, 1, 3]  # run after the context ended, as the gradient cache's backward does
    with HostSyncCounter() as counter:
        known_index(mask)
    assert counter.counts == {"nonzero": 1}  # outside: the layout is gone


def test_collator_layouts_match_the_device_computation():
    collate = ContrastiveCollator(pad_token_id=0, packing_layout=True)
    batch = collate([{"sent0_ids": [5, 6, 7]}, {"sent0_ids": [5]}, {"sent0_ids": [5, 6, 7, 8, 9]}])
    index, ends = batch[TOKEN_LAYOUTS]["attention_mask"]
    assert index.tolist() == batch["attention_mask"].reshape(-1).nonzero().squeeze(1).tolist()
    assert ends == batch["attention_mask"].reshape(-1, 5).sum(1).cumsum(0).tolist()
    labels = torch.full((3, 2, 5), IGNORE_INDEX)
    labels[0, 1, 2] = 7
    labels[2, 0, 0] = 9
    batch = ContrastiveCollator(pad_token_id=0, packing_layout=True, extra_transforms=(lambda b: dict(b, **{MLM_LABELS: labels}),))(
        [{"sent0_ids": [5, 6, 7]}, {"sent0_ids": [5]}, {"sent0_ids": [5, 6, 7, 8, 9]}])
    assert batch[TOKEN_LAYOUTS][MLM_LABELS][0].tolist() == [(1 * 5) + 2, (4 * 5) + 0]


def test_pad_to_multiple_of():
    collate = ContrastiveCollator(pad_token_id=0, pad_to_multiple_of=8)
    batch = collate([{"sent0_ids": [5, 6, 7]}, {"sent0_ids": list(range(5, 14))}])
    assert batch["input_ids"].shape == (2, 2, 16) and batch["attention_mask"].sum().item() == 2 * (3 + 9)
    assert ContrastiveCollator(pad_token_id=0, pad_to_multiple_of=8, max_length=20)([{"sent0_ids": [5]}])["input_ids"].shape[-1] == 24


def test_packed_training_numbers_unchanged_by_the_layouts(tiny_bert, tiny_corpus, tmp_path):
    """The collator's layout only replaces how the index is found: the same run without it gives the same weights."""
    finals = []
    for layout in (True, False):
        argv = ["--model_name_or_path", tiny_bert, "--train_file", tiny_corpus, "--output_dir", tmp_path / str(layout),
                "--per_device_train_batch_size", 8, "--max_steps", 3, "--use_cpu", "--save_strategy", "no",
                "--report_to", "none", "--disable_tqdm", "true", "--seed", 5, "--do_mlm"]
        run = build_run([str(a) for a in argv])
        run.collator.packing_layout = layout
        run.trainer.train()
        finals.append({k: v.clone() for k, v in run.model.state_dict().items()})
    for key in finals[0]:
        torch.testing.assert_close(finals[0][key], finals[1][key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_ready_padding_mask_equals_the_models_own(tiny_bert, implementation):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_bert), attn_implementation=implementation).eval()
    ids = torch.randint(5, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 2:] = 0
    ready = ready_padding_mask(model, mask)
    if LAYERS_RETURN_TUPLES:  # transformers 4.x builds its own mask kind: the 2-D mask is handed on unchanged
        assert ready is mask
        return
    assert ready.shape == (3, 1, 1, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=ready).last_hidden_state,
                                   model(input_ids=ids, attention_mask=mask).last_hidden_state, rtol=0, atol=0)
