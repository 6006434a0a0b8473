"""--mini_batch_size (clusterns/grad_cache.py): a step with the encoder run in chunks equals the whole-batch step.

With dropout off the loss, every parameter's gradient, the logged statistics and the objective's state after the
step equal the uncached step's on the same batch (1e-5 relative; computed in float64 so that the summation order of
the chunks does not blur the check), for every objective; with dropout on, the
replayed forward of each chunk reproduces the first one exactly (and would not without the recorded random state);
a 20-step run with and without caching ends on the same weights; autocast is replayed too."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch
from safetensors.torch import load_file

from clusterns.cli.train import train_main
from clusterns import grad_cache
from clusterns.training.run import build_run
from conftest import with_mlm_head
from test_resume import assert_same_tensors, common_argv, history, run_straight_and_resumed

# DiffCSE's generator keeps its dropout by default (--generator_dropout, as the original): run per chunk it draws other
# masks than on the whole batch (another sample, as the encoder's dropout would), so the equivalence runs it without.
FROZEN_GENERATOR = ["--no_generator_dropout"]
OBJECTIVES = {
    "infonce": ["--objective", "infonce", "--pooler_type", "cls"],
    "infonce-sup": ["--objective", "infonce", "--pooler_type", "cls", "--hard_negative_weight", "0.5"],
    # clustering already started at the step (cosine trigger 1.0 ... starts at the first forward): centroids updated
    "clusterns": ["--objective", "clusterns", "--kmeans", "4", "--kmean_cosine", "1.0", "--bml_weight", "0.1",
                  "--kmeans_lr", "0.1", "--pooler_type", "avg"],
    "clusterns-prompt": ["--objective", "clusterns", "--kmeans", "4", "--kmean_cosine", "1.0", "--bml_weight", "0.1",
                         "--mask_embedding_sentence", "--mask_embedding_sentence_delta"],
    "mixcse": ["--objective", "mixcse", "--pooler_type", "cls"],
    "diffcse-bn": ["--objective", "diffcse", "--generator_name", "{model}", *FROZEN_GENERATOR, "--batchnorm", "--pooler_type", "cls"],
    # the generator and the conditional discriminator in chunks: conditioned after / before the projector, each RTD
    # reduction (its normaliser is the whole batch's), the packed discriminator and generator
    "diffcse": ["--objective", "diffcse", "--generator_name", "{model}", *FROZEN_GENERATOR, "--pooler_type", "cls"],
    "diffcse-pre-projector": ["--objective", "diffcse", "--generator_name", "{model}", *FROZEN_GENERATOR, "--before_mlp",
                              "--rtd_reduction", "sum_over_views", "--masking_scheme", "kodiffcse"],
    "diffcse-packed": ["--objective", "diffcse", "--generator_name", "{model}", *FROZEN_GENERATOR, "--rtd_reduction", "exclude_padding",
                       "--packed_linear", "--pooler_type", "avg"],
    # --do_mlm's second pass in chunks (alone and beside DiffCSE's RTD)
    "infonce-mlm": ["--objective", "infonce", "--pooler_type", "cls", "--do_mlm"],
    "diffcse-mlm": ["--objective", "diffcse", "--generator_name", "{model}", *FROZEN_GENERATOR, "--pooler_type", "cls", "--do_mlm"],
}


@pytest.fixture(scope="module")
def mlm_bert(tiny_bert, tmp_path_factory):
    """tiny_bert with a masked-LM head (--do_mlm starts from the checkpoint's head)."""
    return with_mlm_head(tiny_bert, tmp_path_factory.mktemp("mlm") / "bert-mlm")


@pytest.fixture(scope="module")
def nli_csv(tmp_path_factory, tiny_corpus):
    lines = tiny_corpus.read_text().splitlines()[:48]
    rows = ["sent0,sent1,hard_neg"] + [f"{a},{b},{c}" for a, b, c in zip(lines, lines[1:] + lines[:1], lines[2:] + lines[:2])]
    path = tmp_path_factory.mktemp("nli") / "nli.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def one_step(model, corpus, flags, mini=None, dropout="0", autocast=None, prepare=None):
    """(loss, gradients, logs, objective state) of one training step on the first batch of 12; `prepare(model)`
    is called before it (e.g. to add hooks)."""
    argv = ["--model_name_or_path", str(model), "--train_file", str(corpus), "--output_dir", "/tmp/unused-grad-cache",
            "--overwrite_output_dir", "--per_device_train_batch_size", "12", "--use_cpu", "--dropout_prob", dropout,
            "--max_steps", "1", "--report_to", "none", "--max_seq_length", "24", "--seed", "3",
            *[f.format(model=model) for f in flags], *(["--mini_batch_size", str(mini)] if mini else [])]
    run = build_run(argv)
    model_ = run.trainer.contrastive_model
    clustering = "clusterns" in flags
    # float64: the comparison then sees the caching, not fp32's summation order (ClusterNS's clustering math is
    # fp32 by design, so it is compared in fp32)
    precise = not autocast and not clustering
    if precise:
        model_.double()
    model_.train()
    if prepare is not None:
        prepare(model_)
    batch = next(iter(run.trainer.get_train_dataloader()))
    previous = torch.get_default_dtype()
    if precise:
        torch.set_default_dtype(torch.float64)
    try:
        if clustering:  # one forward starts the clustering: the compared step then uses it
            with torch.no_grad():
                model_(**batch)
        torch.manual_seed(0)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with context:
            out = model_(**batch)
        out["loss"].backward()
    finally:
        torch.set_default_dtype(previous)
    grads = {n: p.grad.detach().clone() for n, p in model_.named_parameters() if p.grad is not None}
    state = {k: v.detach().clone() for k, v in model_.objective.state_dict().items() if torch.is_tensor(v)}
    return out["loss"].detach(), grads, {k: float(v) for k, v in out["logs"].items()}, state


def assert_same_step(a, b, rtol=1e-5):
    (loss_a, grads_a, logs_a, state_a), (loss_b, grads_b, logs_b, state_b) = a, b
    torch.testing.assert_close(loss_b, loss_a, rtol=rtol, atol=0)
    assert grads_a.keys() == grads_b.keys() and grads_a
    scale = max(float(g.abs().max()) for g in grads_a.values())
    for name, grad in grads_a.items():  # relative to the largest gradient: some are float noise around 0
        torch.testing.assert_close(grads_b[name], grad, rtol=rtol, atol=rtol * scale, msg=name)
    assert logs_a.keys() == logs_b.keys()
    for key in logs_a:
        assert logs_b[key] == pytest.approx(logs_a[key], rel=rtol, abs=1e-7), key
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_b[key].double(), state_a[key].double(), rtol=rtol, atol=1e-7, msg=key)


def test_chunk_slices():
    assert grad_cache.chunk_slices(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert grad_cache.chunk_slices(3, 5) == [slice(0, 3)]  # larger than the batch: one chunk
    with pytest.raises(ValueError, match="--mini_batch_size must be >= 1"):
        grad_cache.chunk_slices(3, 0)


def test_chunked_sum_hand_case():
    """sum over chunks of w * x_i^2: the value 2 * 55, d/dx = 2 w x, d/dw = 55, each scaled by the incoming gradient (3,
    as a grad scaler or accumulation would); the extras come back per chunk; no chunk's graph is kept."""
    x = torch.arange(1.0, 6.0).requires_grad_()
    w = torch.tensor(2.0, requires_grad=True)
    graphs = []

    def term(rows, x_rows):
        graphs.append(torch.is_grad_enabled())
        return (w * x_rows ** 2).sum(), x_rows.detach().sum()

    total, extras = grad_cache.chunked_sum(term, [slice(0, 2), slice(2, 5)], x * 1.0, anchor=w)
    assert total.item() == 110.0 and [e.item() for e in extras] == [3.0, 12.0] and graphs == [False, False]
    (3 * total).backward()
    assert graphs == [False, False, True, True]  # replayed with a graph in the backward pass
    torch.testing.assert_close(x.grad, 3 * 2 * 2.0 * torch.arange(1.0, 6.0))
    assert w.grad.item() == 3 * 55.0
    # a term of the batch alone (no inputs): the parameter's gradient only
    w.grad = None
    total, _ = grad_cache.chunked_sum(lambda rows, _: (((w * torch.arange(1.0, 6.0)[rows]) ** 2).sum(), None),
                                      [slice(0, 4), slice(4, 5)], None, anchor=w)
    total.backward()
    assert total.item() == 4 * 55.0 and w.grad.item() == 2 * 2.0 * 55.0


@pytest.mark.parametrize("autocast", [False, True])
def test_rtd_replay_reproduces_the_discriminator_dropout(autocast, tiny_bert, tiny_corpus, monkeypatch):
    """Dropout on: each chunk's RTD term replayed in the backward pass equals its first computation exactly (the
    discriminator's dropout masks are replayed, and under bf16 autocast its precision); without the recorded random
    state, or without the recorded autocast state, it would not."""
    import clusterns.objectives.diffcse.objective as diffcse_module

    terms: list[float] = []
    original = diffcse_module.chunked_sum

    def recording(run_chunk, slices, inputs, anchor):
        def run_and_record(piece, rows):
            term, extra = run_chunk(piece, rows)
            terms.append(float(term.detach()))
            return term, extra

        return original(run_and_record, slices, inputs, anchor)

    monkeypatch.setattr(diffcse_module, "chunked_sum", recording)
    one_step(tiny_bert, tiny_corpus, OBJECTIVES["diffcse"], mini=5, dropout="0.1", autocast=autocast)
    assert len(terms) == 6 and terms[3:] == terms[:3]
    terms.clear()
    if autocast:  # the replay in full precision
        monkeypatch.setattr(grad_cache, "autocast_state", lambda device_type: (device_type, False, torch.float32))
    else:
        monkeypatch.setattr(grad_cache.RandomState, "replay", lambda self: contextlib.nullcontext())
    one_step(tiny_bert, tiny_corpus, OBJECTIVES["diffcse"], mini=5, dropout="0.1", autocast=autocast)
    assert terms[3:] != terms[:3]


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_cached_step_equals_the_whole_batch_step(name, tiny_bert, mlm_bert, tiny_corpus, nli_csv):
    corpus = nli_csv if name == "infonce-sup" else tiny_corpus
    model = mlm_bert if name.endswith("-mlm") else tiny_bert
    whole = one_step(model, corpus, OBJECTIVES[name])
    for mini in (4, 5):  # 12 = 3 x 4, and 5 + 5 + 2 (the last chunk smaller)
        assert_same_step(whole, one_step(model, corpus, OBJECTIVES[name], mini=mini),
                         rtol=1e-4 if name.startswith("clusterns") else 1e-5)
    if name.startswith("clusterns"):
        assert whole[2]["cluster/active"] == 1.0  # the clustering state really was updated in the compared step


def rows_seen(module, calls: list[int]):
    """A forward pre-hook recording how many sequences each call of `module` gets."""
    def hook(_, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls.append(int(ids.shape[0]))
    return module.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("name", ["diffcse", "diffcse-mlm"])
def test_sub_networks_run_in_chunks(name, tiny_bert, mlm_bert, tiny_corpus):
    """Under --mini_batch_size 4 (batch 12, 2 views) no transformer sees more than 4 x 2 sequences at once: the
    encoder, DiffCSE's generator and discriminator, --do_mlm's second pass; and each chunk runs twice where it
    builds a graph (once without, once replayed) but the generator once (it has no gradient)."""
    calls: dict[str, list[int]] = {"encoder": [], "generator": [], "discriminator": []}

    def record(model_):
        rows_seen(model_.encoder.backbone, calls["encoder"])
        rows_seen(model_.objective.generator.base_model, calls["generator"])  # (the packed generator: its base and head)
        rows_seen(model_.objective.discriminator.backbone, calls["discriminator"])

    one_step(mlm_bert if name.endswith("-mlm") else tiny_bert, tiny_corpus, OBJECTIVES[name], mini=4, prepare=record)
    passes = 2 if name.endswith("-mlm") else 1  # the contrastive pass, and the MLM pass
    assert calls["encoder"] == [8] * 3 * 2 * passes
    assert calls["generator"] == [8] * 3
    assert calls["discriminator"] == [8] * 3 * 2


@pytest.mark.parametrize("name", ["infonce", "diffcse"])
def test_autocast_is_replayed(name, tiny_bert, tiny_corpus):
    """Under bf16 autocast the replayed chunks (the encoder's; DiffCSE's discriminator's) run in bf16 as the cached
    ones did (else the gradients would come from an fp32 forward of other values)."""
    whole = one_step(tiny_bert, tiny_corpus, OBJECTIVES[name], autocast=True)
    cached = one_step(tiny_bert, tiny_corpus, OBJECTIVES[name], mini=4, autocast=True)
    assert_same_step(whole, cached, rtol=2e-2)


def test_replay_reproduces_the_dropout_masks(tiny_bert, tiny_corpus, monkeypatch):
    """Dropout on: the graph-building forward of each chunk gives exactly the first forward's vectors; without the
    recorded random state it would not (the check has teeth)."""
    seen: list[torch.Tensor] = []
    original = grad_cache.cached_forward

    def recording(run_chunk, batch_size, mini_batch_size, anchor):
        def run_and_record(rows):
            out = run_chunk(rows)
            seen.append(out.detach().clone())
            return out

        return original(run_and_record, batch_size, mini_batch_size, anchor)

    import clusterns.training.model as model_module

    monkeypatch.setattr(model_module, "cached_forward", recording)
    one_step(tiny_bert, tiny_corpus, OBJECTIVES["infonce"], mini=5, dropout="0.1")
    first, replayed = seen[:3], seen[3:]
    assert len(replayed) == 3
    for a, b in zip(first, replayed):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    seen.clear()
    monkeypatch.setattr(grad_cache.RandomState, "replay", lambda self: contextlib.nullcontext())
    one_step(tiny_bert, tiny_corpus, OBJECTIVES["infonce"], mini=5, dropout="0.1")
    assert not all(torch.equal(a, b) for a, b in zip(seen[:3], seen[3:]))


def test_twenty_steps_with_and_without_caching_end_on_the_same_weights(tiny_bert, tiny_corpus, tmp_path):
    common = ["--model_name_or_path", str(tiny_bert), "--train_file", str(tiny_corpus), "--per_device_train_batch_size", "16",
              "--use_cpu", "--dropout_prob", "0", "--max_steps", "20", "--report_to", "none", "--seed", "5",
              "--disable_tqdm", "true", "--logging_steps", "5", "--objective", "infonce", "--do_train"]
    train_main(common + ["--output_dir", str(tmp_path / "whole")])
    train_main(common + ["--output_dir", str(tmp_path / "cached"), "--mini_batch_size", "6"])
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "cached" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    losses = [[h["loss"] for h in json.loads((tmp_path / n / "trainer_state.json").read_text())["log_history"] if "loss" in h]
              for n in ("whole", "cached")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_bad_mini_batch_size_is_refused(value, tiny_bert, tiny_corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--model_name_or_path", str(tiny_bert), "--train_file", str(tiny_corpus), "--output_dir", str(tmp_path),
                    "--use_cpu", "--do_train", "--mini_batch_size", value])
    assert exit_info.value.code == 2
    assert f"--mini_batch_size must be >= 1 (sentences per encoder chunk), got {value}" in capsys.readouterr().err


def test_resume_mid_epoch_with_caching_is_exact(tiny_bert, small_corpus, tmp_path, monkeypatch):
    """Dropout on, --mini_batch_size 3 of batch 8: 8 steps straight == 4 steps, a kill, a new process resuming
    (mid-epoch): the same loss at every step and bit-identical final weights (the replay leaves the random stream
    as the first pass left it, so the checkpointed random state is the one the next step needs)."""
    argv = common_argv(tiny_bert, small_corpus, "--objective", "infonce", "--mini_batch_size", "3")
    straight, resumed = run_straight_and_resumed(tmp_path, monkeypatch, argv)
    losses = [[h["loss"] for h in history(out) if "loss" in h] for out in (straight, resumed)]
    assert len(losses[0]) == 8 and losses[1] == losses[0]
    assert_same_tensors(load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors")))


def test_host_memory_bound_trims_only_past_its_slack(monkeypatch):
    """The CPU pass trims glibc's heap only when it has grown by the slack since its first chunk (a trim per chunk
    costs page faults); never on a GPU device."""
    trims, rss = [], iter([1000.0, 1050.0, 1120.0, 1200.0, 1100.0])
    monkeypatch.setattr(grad_cache, "_MALLOC_TRIM", lambda pad: trims.append(pad) or 1)
    monkeypatch.setattr(grad_cache, "resident_mb", lambda: next(rss))
    bound = grad_cache.HostMemoryBound(torch.device("cpu"), slack_mb=128)
    for _ in range(5):
        bound.after_chunk()
    assert trims == [0]  # only at 1200 MB (> 1000 + 128)
    assert not grad_cache.HostMemoryBound(torch.device("cuda", 0)).active
    monkeypatch.undo()
    if grad_cache.resident_mb() is not None:  # on Linux: the real reading is this process's RSS
        assert grad_cache.resident_mb() > 10
