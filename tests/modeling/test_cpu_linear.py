"""Linear layers through oneDNN (clusterns/modeling/cpu_linear.py): F.linear's product and gradients, in encode()
and (--fast_linear) in training, falling back to F.linear everywhere else."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN, GELUActivation
from transformers.models.bert.modeling_bert import BertIntermediate

from clusterns.modeling import cpu_linear, packing
from clusterns.modeling.cpu_linear import FastLinear, fast_linears, is_exact_gelu, linear, onednn_available, use_fast_linears
from clusterns.modeling.encoder import SentenceEncoder

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear ops")

SENTENCES = ["a man is playing a guitar .", "two dogs run .", "a child .",
             "the woman is slicing a tomato on the table with a big knife near the window ."]


def _weights(out_features=24, in_features=16, rows=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, in_features, generator=generator), torch.randn(out_features, in_features, generator=generator),
            torch.randn(out_features, generator=generator))


def test_outside_a_block_it_is_f_linear_exactly():
    x, w, b = _weights()
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    assert torch.equal(linear(x, w, b, gelu=True), F.gelu(F.linear(x, w, b)))


@needs_onednn
@pytest.mark.parametrize("reorder", [True, False])
def test_inside_a_block_same_product_to_float_rounding(reorder):
    x, w, b = _weights()
    module = nn.Linear(16, 24)
    with torch.no_grad(), fast_linears(module, reorder=reorder):
        for gelu in (False, True):
            expected = F.gelu(F.linear(x, w, b)) if gelu else F.linear(x, w, b)
            got = linear(x, w, b, gelu=gelu)
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            assert not torch.equal(got, x.new_zeros(()))
        three_d = x.view(4, 10, 16)  # leading dimensions kept
        torch.testing.assert_close(linear(three_d, w, None), F.linear(three_d, w), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_block_reorders_each_weight_once_and_forgets_after():
    x, w, b = _weights()
    module = nn.Sequential(nn.Linear(16, 24), nn.Linear(24, 8))
    with torch.no_grad(), fast_linears(module):
        first = module(x)
        cache = cpu_linear._ACTIVE.get()
        assert len(cache) == 2  # one reordered weight per layer
        second = module(x)
        assert len(cache) == 2  # reused, not reordered again
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        linear(x, w, b, key=("mine",))
        assert ("mine",) in cache
    assert cpu_linear._ACTIVE.get(None) is None  # outside: no cache left behind


def test_block_swaps_plain_linears_only_and_restores_them():
    class Custom(nn.Linear):
        pass

    module = nn.Sequential(nn.Linear(4, 4), Custom(4, 4), nn.Sequential(nn.Linear(4, 2)))
    keys = list(module.state_dict())
    with fast_linears(module):
        assert [type(m) for m in (module[0], module[1], module[2][0])] == [FastLinear, Custom, FastLinear]
        assert list(module.state_dict()) == keys
    assert [type(m) for m in (module[0], module[1], module[2][0])] == [nn.Linear, Custom, nn.Linear]
    with pytest.raises(RuntimeError, match="boom"), fast_linears(module):
        raise RuntimeError("boom")
    assert type(module[0]) is nn.Linear and cpu_linear._ACTIVE.get(None) is None


@needs_onednn
def test_falls_back_to_f_linear_where_it_must():
    x, w, b = _weights()
    module = nn.Linear(16, 24)
    with fast_linears(module):
        # gradients needed (training): F.linear exactly, and the gradient flows
        wg = w.clone().requires_grad_()
        out = linear(x, wg, b)
        assert torch.equal(out, F.linear(x, w, b))
        out.sum().backward()
        torch.testing.assert_close(wg.grad, torch.ones(40, 24).t() @ x)
        with torch.no_grad():
            assert torch.equal(linear(x.double(), w.double(), b.double()), F.linear(x.double(), w.double(), b.double()))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert linear(x, w, b).dtype == torch.bfloat16  # autocast's F.linear, not an fp32 oneDNN call
            assert linear(x[:0], w, b).shape == (0, 24)


@needs_onednn
@pytest.mark.parametrize("shape", [(40, 16), (4, 10, 16)])
@pytest.mark.parametrize("grads", ["all", "weights only", "input only", "no bias"])
def test_trained_linear_equals_f_linear_with_gradients(shape, grads):
    x, w, b = _weights()
    x = x.view(shape)
    if grads == "no bias":
        b = None
    x, w = x.clone().requires_grad_(grads != "weights only"), w.clone().requires_grad_(grads != "input only")
    if b is not None:
        b = b.clone().requires_grad_(grads != "input only")
    upstream = torch.randn(*shape[:-1], 24)
    inputs = [t for t in (x, w, b) if t is not None and t.requires_grad]
    expected = F.linear(x, w, b)
    expected_grads = torch.autograd.grad(expected, inputs, upstream)
    assert _onednn_calls(lambda: linear(x, w, b, trained=True).backward(upstream)) == (2 if x.requires_grad else 1)
    got = linear(x, w, b, trained=True)
    assert got.shape == expected.shape and got.grad_fn is not None
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(torch.autograd.grad(got, inputs, upstream), expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_trained_linear_falls_back_where_onednn_does_not_fit():
    x, w, b = _weights()
    w = w.requires_grad_()
    assert _onednn_calls(lambda: linear(x, w, b).sum().backward()) == 0  # not a FastLinear layer: F.linear
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    double = linear(x.double(), w.double(), b.double(), trained=True)
    assert torch.equal(double, F.linear(x.double(), w.double(), b.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, w, b, trained=True).dtype == torch.bfloat16  # autocast's F.linear
    assert _onednn_calls(lambda: linear(x[:0], w, b, trained=True).sum().backward()) == 0


def test_use_fast_linears_swaps_plain_linears_for_good():
    class Custom(nn.Linear):
        pass

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 24), nn.GELU(), Custom(24, 24), nn.Linear(24, 8))
    reference = [nn.Linear(16, 24), Custom(24, 24), nn.Linear(24, 8)]
    for r, m in zip(reference, (module[0], module[2], module[3])):
        r.load_state_dict(m.state_dict())
    keys = list(module.state_dict())
    assert use_fast_linears(module) == 2
    assert [type(m) for m in module] == [FastLinear, nn.GELU, Custom, FastLinear] and list(module.state_dict()) == keys
    x = torch.randn(40, 16)
    out = module(x)
    expected = reference[2](reference[1](F.gelu(reference[0](x))))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    for r, m in zip(reference, (module[0], module[2], module[3])):
        torch.testing.assert_close(m.weight.grad, r.weight.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.bias.grad, r.bias.grad, rtol=1e-4, atol=1e-5)
    with torch.no_grad(), fast_linears(module):
        torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)
    assert type(module[0]) is FastLinear  # a block leaves a FastLinear layer as it found it


def test_is_exact_gelu():
    assert is_exact_gelu(F.gelu) and is_exact_gelu(nn.GELU()) and is_exact_gelu(GELUActivation()) and is_exact_gelu(ACT2FN["gelu"])
    assert not is_exact_gelu(nn.GELU(approximate="tanh"))
    assert not is_exact_gelu(GELUActivation(use_gelu_python=True))  # same maths, but not the call it replaces
    assert not is_exact_gelu(ACT2FN["gelu_new"]) and not is_exact_gelu(nn.ReLU()) and not is_exact_gelu(torch.tanh)


def test_block_fuses_known_dense_then_gelu_only(tiny_bert, monkeypatch):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_bert)
    calls = []
    real = cpu_linear.linear
    monkeypatch.setattr(cpu_linear, "linear", lambda *a, **k: calls.append(k.get("gelu", False)) or real(*a, **k))
    y = torch.randn(7, config.hidden_size)
    intermediate = BertIntermediate(config).eval()

    class OwnForward(BertIntermediate):  # a subclass may compute something else: left to its own forward
        def forward(self, hidden_states):
            return super().forward(hidden_states) * 2

    own = OwnForward(config).eval()
    other = BertIntermediate(config).eval()
    other.intermediate_act_fn = ACT2FN["gelu_new"]  # not the exact GELU: not fused
    model = nn.ModuleList([intermediate, own, other])
    expected = [m(y) for m in model]
    with torch.no_grad(), fast_linears(model):
        assert isinstance(intermediate, BertIntermediate) and type(intermediate).__name__ == "FusedBertIntermediate"
        assert type(own) is OwnForward and type(other) is BertIntermediate
        got = [m(y) for m in model]
    assert [type(m) for m in model] == [BertIntermediate, OwnForward, BertIntermediate]  # restored
    assert calls.count(True) == 1  # the fused call; the other two went through their dense layers
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def _onednn_calls(run) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    return sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise")


@needs_onednn
@pytest.mark.parametrize("packed", [False, True])
def test_encode_fast_linear_same_vectors(tiny_bert, packed, monkeypatch):
    encoder = SentenceEncoder.from_pretrained(str(tiny_bert), pooler="avg", device="cpu")
    if packed:
        packing.enable_packed_linear(encoder.backbone)
    fused = []
    real = cpu_linear.linear
    monkeypatch.setattr(cpu_linear, "linear", lambda *a, **k: fused.append(k.get("gelu")) or real(*a, **k))
    sentences = SENTENCES * 150  # past REORDER_MIN_TOKENS: the weights are reordered once for the call
    assert _onednn_calls(lambda: encoder.encode(sentences, batch_size=32, fast_linear=False)) == 0
    reference = encoder.encode(sentences, batch_size=32, fast_linear=False)
    fused.clear()
    assert _onednn_calls(lambda: encoder.encode(sentences, batch_size=32)) > 0
    fast = encoder.encode(sentences, batch_size=32)
    np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-5)
    assert True in fused  # the feed-forward takes its GELU inside the oneDNN call (plain and packed forwards)
    assert all(type(m) is not FastLinear for m in encoder.modules())  # restored after the call
    few = SENTENCES[:2]  # below REORDER_MIN_TOKENS: oneDNN on the weights as they are
    assert _onednn_calls(lambda: encoder.encode(few)) > 0
    np.testing.assert_allclose(encoder.encode(few), encoder.encode(few, fast_linear=False), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("packed", ["true", "false"])
def test_fast_linear_flag_trains_the_encoder_through_onednn_with_the_same_gradients(tiny_bert, packed):
    """--fast_linear (default on): the encoder's linear layers are FastLinear; a training forward and backward run
    oneDNN's products and give the loss and gradients of --no_fast_linear (F.linear) to float rounding."""
    import copy

    from clusterns.training.run import build_encoder, parse_args

    encoders = {}
    for fast in ("true", "false"):
        model_args, data_args, _, _ = parse_args(["--model_name_or_path", str(tiny_bert), "--output_dir", "/tmp/unused", "--use_cpu",
                                                  "--pooler_type", "avg", "--dropout_prob", "0.0", "--fast_linear", fast,
                                                  "--packed_linear", packed])
        torch.manual_seed(0)
        encoders[fast] = build_encoder(model_args, data_args, None).train()
    fast, plain = encoders["true"], encoders["false"]
    linears = sum(type(m) is nn.Linear for m in plain.backbone.modules())
    assert linears >= 6 * plain.backbone.config.num_hidden_layers  # q, k, v, attention output, intermediate, output
    assert sum(type(m) is FastLinear for m in fast.backbone.modules()) == linears
    assert not any(type(m) is FastLinear for m in plain.backbone.modules())
    plain.load_state_dict(fast.state_dict())
    tokenized = fast.tokenize(SENTENCES)["input_ids"]
    width = max(map(len, tokenized))
    ids = torch.tensor([t + [0] * (width - len(t)) for t in tokenized])
    mask = (ids != 0).long()
    weights = torch.randn(len(SENTENCES), fast.backbone.config.hidden_size)
    calls = {}
    for name, encoder in encoders.items():
        calls[name] = _onednn_calls(lambda: (encoder(ids, mask) * weights).sum().backward())
    assert calls["false"] == 0 and calls["true"] > 0
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        if a.grad is None:
            assert b.grad is None, name
            continue
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
    twin = copy.deepcopy(fast)  # a FastLinear model copies, saves and reloads as a plain one
    assert list(twin.state_dict()) == list(plain.state_dict())


# ---- oneDNN's primitive cache (train.py: none kept unless --onednn_primitive_cache) ------------------
def _onednn_run(argv: list[str], capacity: str | None = None) -> tuple[dict[str, int], str]:
    """Run `python argv` with ONEDNN_VERBOSE=2 (and ONEDNN_PRIMITIVE_CACHE_CAPACITY=capacity, else unset): how many
    primitives oneDNN made anew (cache misses) and took from its cache (hits), and the run's stderr."""
    env = {k: v for k, v in os.environ.items() if k != cpu_linear.ONEDNN_CACHE_VARIABLE}
    env.update(ONEDNN_VERBOSE="2", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    if capacity is not None:
        env[cpu_linear.ONEDNN_CACHE_VARIABLE] = capacity
    proc = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("onednn_verbose")]
    counts = {"miss": sum("create:cache_miss" in line for line in lines), "hit": sum("create:cache_hit" in line for line in lines)}
    return counts, proc.stderr


PROBE = """
import sys, torch
from clusterns.modeling.cpu_linear import limit_onednn_primitive_cache
if sys.argv[1] == "limit":
    limit_onednn_primitive_cache()
x, w = torch.randn(64, 32), torch.randn(16, 32)
for _ in range(3):
    torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
"""


def test_limit_onednn_primitive_cache_sets_zero_unless_the_variable_is_set(monkeypatch):
    monkeypatch.delenv(cpu_linear.ONEDNN_CACHE_VARIABLE, raising=False)
    assert cpu_linear.limit_onednn_primitive_cache() == "0" and os.environ[cpu_linear.ONEDNN_CACHE_VARIABLE] == "0"
    monkeypatch.setenv(cpu_linear.ONEDNN_CACHE_VARIABLE, "64")  # the user's own value is kept
    assert cpu_linear.limit_onednn_primitive_cache() == "64" and os.environ[cpu_linear.ONEDNN_CACHE_VARIABLE] == "64"


@needs_onednn
def test_with_the_limit_onednn_makes_each_primitive_again():
    """What the limit relies on in this torch build: the variable, set before oneDNN's first primitive, stops the
    reuse (three calls of one shape: three primitives made instead of one made and two reused)."""
    limited, _ = _onednn_run(["-c", PROBE, "limit"])
    assert limited == {"miss": 3, "hit": 0}, limited
    default, _ = _onednn_run(["-c", PROBE, "keep"])
    assert default["miss"] == 1 and default["hit"] == 2, default


@needs_onednn
def test_train_py_keeps_no_onednn_primitive_unless_asked(tiny_bert, tiny_corpus, tmp_path):
    """train.py (the real CLI) sets the limit before the model is built: a CPU training run reuses no oneDNN primitive;
    with --onednn_primitive_cache it does; a capacity the user set is kept, and the flag then says it changes nothing."""
    script = Path(__file__).resolve().parents[2] / "train.py"

    def run(name: str, *flags: str, capacity: str | None = None) -> tuple[dict[str, int], str]:
        argv = [str(script), "--model_name_or_path", str(tiny_bert), "--train_file", str(tiny_corpus), "--output_dir",
                str(tmp_path / name), "--per_device_train_batch_size", "8", "--max_steps", "2", "--use_cpu",
                "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", "0",
                "--logging_steps", "100", *flags]
        return _onednn_run(argv, capacity)

    default, _ = run("default")
    assert default["miss"] > 0 and default["hit"] == 0, default
    kept, stderr = run("kept", "--onednn_primitive_cache")
    assert kept["hit"] > 0 and "is set in the environment" not in stderr, kept
    assert run("user", capacity="1024")[0]["hit"] > 0  # the user's variable wins over the default limit
    # the flag and a variable that disagrees: oneDNN follows the variable, and the run says so
    conflict, stderr = run("conflict", "--onednn_primitive_cache", capacity="0")
    assert conflict["hit"] == 0
    assert "--onednn_primitive_cache: ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 is set in the environment" in stderr
