"""Linear layers through oneDNN on the CPU: the fp32 product of F.linear, about 1.1x faster.

torch computes a CPU F.linear in fp32 with MKL's sgemm. oneDNN (built into torch's x86 wheels) computes the same
fp32 product with its inner-product kernel, faster at encoder shapes, and faster still with the weight reordered
to its blocked layout (what torch.compile's CPU backend runs after freezing): at MiniLM's shapes on this project's
2-core CPU, 2048 tokens x [384 -> 1536], MKL 12.1 ms, oneDNN 11.3 ms, oneDNN with the reordered weight 10.8 ms
(reordering a weight: 0.2 ms). Results differ from F.linear by float rounding only (~1e-6 relative). BERT's
feed-forward input (a linear layer, then the exact GELU) takes the GELU inside the same oneDNN call.

Inference: `SentenceEncoder.encode()` (every evaluation goes through it) runs its forwards inside
`fast_linears(encoder)`, which routes the encoder's nn.Linear layers here for the duration of the call and reuses
each reordered weight across the call's batches (the weights cannot change during it).

Training (`--fast_linear`, CPU): the encoder's nn.Linear layers become FastLinear for good; with gradients their
forward and input-gradient products run through oneDNN (the weight as it is: it changes every step) and the
weight gradient through torch.mm (2700 tokens x [384 -> 1536], timed alone: forward 16.8 -> 14.8 ms, input
gradient 16.0 -> 14.8 ms; the weight gradient takes 16.3 ms with torch.mm, 20.0 ms through oneDNN's inner product
on transposed operands). oneDNN JIT-compiles kernels per row count (a first call at a new count: about 5 ms more;
they stay cached with or without its primitive cache): the packed layers round their row count
(packing.CPU_ROUND_ROWS) so that a training run meets few of them.

Everything else falls back to F.linear: other devices and dtypes, autocast, a forward that needs gradients
outside FastLinear, torch.compile tracing, and a torch build without the oneDNN ops (checked once against F.linear).

oneDNN keeps every primitive it makes (up to 1024) for reuse. In training that costs peak memory: MiniLM's training
peak RSS is 130-280 MB lower when none is kept (ONEDNN_PRIMITIVE_CACHE_CAPACITY=0), each of the step's ~60 oneDNN
calls then making its primitive again (0.15-0.4 ms by oneDNN's own timing, at most ~1.6% of the step; measured step
times equal within noise); the JIT-compiled kernels stay cached either way. train.py asks for that
(`limit_onednn_primitive_cache`) unless --onednn_primitive_cache or the variable says otherwise.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.activations import GELUActivation
from transformers.models.bert.modeling_bert import BertIntermediate
from transformers.models.electra.modeling_electra import ElectraIntermediate
from transformers.models.mpnet.modeling_mpnet import MPNetIntermediate
from transformers.models.roberta.modeling_roberta import RobertaIntermediate
from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaIntermediate

# The reordered weights of the innermost fast_linears() block: {key: (sources kept alive, reordered)}; None when the
# block does not reorder; unset outside a block.
_ACTIVE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("clusterns_fast_linears")
_OUTSIDE = object()
_available: bool | None = None
ONEDNN_CACHE_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's linear ops and they agree with F.linear (checked once)."""
    global _available
    if _available is None:
        try:
            generator = torch.Generator().manual_seed(0)
            x, w, b = (torch.randn(shape, generator=generator) for shape in ((5, 16), (8, 16), (8,)))
            reordered = torch.ops.mkldnn._reorder_linear_weight(w, None)
            ok = all(torch.allclose(torch.ops.mkldnn._linear_pointwise(x, weight, b, "none", [], ""), F.linear(x, w, b),
                                    atol=1e-5) for weight in (w, reordered))
            ok = ok and torch.allclose(torch.ops.mkldnn._linear_pointwise(x, reordered, b, "gelu", [], "none"),
                                       F.gelu(F.linear(x, w, b)), atol=1e-5)
            _available = bool(torch.backends.mkldnn.is_available() and ok)
        except (AttributeError, RuntimeError, NotImplementedError):
            _available = False
    return _available


def limit_onednn_primitive_cache() -> str:
    """Ask oneDNN to keep no primitive between calls (ONEDNN_PRIMITIVE_CACHE_CAPACITY=0) unless the variable is set
    already; returns the capacity the variable now holds. oneDNN reads it once, when this process makes its first
    primitive (a CPU linear layer, GELU, ...): later calls change nothing."""
    return os.environ.setdefault(ONEDNN_CACHE_VARIABLE, "0")


def _onednn_fits(x: Tensor, weight: Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.numel() > 0
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling() and onednn_available())


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _TrainedLinear(torch.autograd.Function):
    """F.linear on [T, in] rows with oneDNN's forward and input gradient; the weight gradient through torch.mm."""

    @staticmethod
    def forward(ctx, rows: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, weight = ctx.saved_tensors
        grad = grad.contiguous()
        # grad @ weight as oneDNN's inner product with weight^T as its [in, out] weight (a view: no copy)
        grad_rows = torch.ops.mkldnn._linear_pointwise(grad, weight.t(), None, "none", [], "") if ctx.needs_input_grad[0] else None
        grad_weight = grad.t().mm(rows) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_rows, grad_weight, grad_bias


def is_exact_gelu(fn: object) -> bool:
    """Whether the activation `fn` computes F.gelu (erf form): torch's, nn.GELU(), transformers' GELUActivation."""
    if fn is F.gelu:
        return True
    if type(fn) is nn.GELU:
        return fn.approximate == "none"
    return type(fn) is GELUActivation and getattr(fn, "act", None) is F.gelu


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, key: tuple | None = None, gelu: bool = False,
           trained: bool = False) -> Tensor:
    """F.linear(x, weight, bias) (then F.gelu if `gelu`). Without gradients, through oneDNN inside a fast_linears()
    block, the GELU then computed in the same call; `key`: what identifies `weight` for the block's reuse of
    reordered weights (default: the weight object itself). With gradients, through oneDNN if `trained` (FastLinear's
    layers: --fast_linear). Elsewhere, and where oneDNN does not fit (_onednn_fits), F.linear."""
    reordered = _ACTIVE.get(_OUTSIDE)
    grad = _needs_grad(x, weight, bias)
    fits = _onednn_fits(x, weight)
    if grad or reordered is _OUTSIDE or not fits:
        if grad and trained and fits:
            rows = x.reshape(-1, x.shape[-1]).contiguous()
            out = _TrainedLinear.apply(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])
        else:
            out = F.linear(x, weight, bias)
        return F.gelu(out) if gelu else out
    if reordered is not None:
        key = key if key is not None else (id(weight),)
        entry = reordered.get(key)
        if entry is None:
            entry = reordered[key] = (weight, torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None))
        packed = entry[1]
    else:
        packed = weight.contiguous()
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    post_op, algorithm = ("gelu", "none") if gelu else ("none", "")  # oneDNN's "gelu" with algorithm "none": the erf form
    return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, post_op, [], algorithm).view(*x.shape[:-1], weight.shape[0])


class FastLinear(nn.Linear):
    """nn.Linear whose forward goes through `linear` above, gradients included: the class fast_linears() gives a
    module's nn.Linear layers for the duration of its block, and use_fast_linears() for good (--fast_linear);
    parameters and state_dict unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, trained=True)


def use_fast_linears(module: nn.Module) -> int:
    """Give every plain nn.Linear inside `module` the class FastLinear (forward and backward through oneDNN on the
    CPU in fp32; F.linear elsewhere); returns how many. Parameters, state_dict keys and checkpoints are unchanged."""
    linears = [m for m in module.modules() if type(m) is nn.Linear]
    for m in linears:
        m.__class__ = FastLinear
    return len(linears)


PLAIN_LINEARS = (nn.Linear, FastLinear)  # the classes whose forward is exactly F.linear(x, weight, bias)

# Hugging Face's feed-forward input modules whose forward is exactly intermediate_act_fn(dense(x)).
DENSE_THEN_ACTIVATION = (BertIntermediate, RobertaIntermediate, XLMRobertaIntermediate, ElectraIntermediate, MPNetIntermediate)


class _DenseGelu:
    """The forward a DENSE_THEN_ACTIVATION module with an exact GELU gets inside fast_linears(): one `linear` call
    with the GELU inside it."""

    def forward(self, hidden_states: Tensor) -> Tensor:
        return linear(hidden_states, self.dense.weight, self.dense.bias, gelu=True)


# one fused subclass per module class, made once: FusedBertIntermediate(_DenseGelu, BertIntermediate), ...
FUSED_GELU = {cls: type(f"Fused{cls.__name__}", (_DenseGelu, cls), {}) for cls in DENSE_THEN_ACTIVATION}


def _fusable(m: nn.Module) -> bool:
    return type(m) in FUSED_GELU and type(m.dense) in PLAIN_LINEARS and is_exact_gelu(m.intermediate_act_fn)


@contextlib.contextmanager
def fast_linears(module: nn.Module, reorder: bool = True) -> Iterator[None]:
    """Inside the block: `module`'s plain nn.Linear layers (and `linear` calls) run through oneDNN where _onednn_fits
    allows, and BERT-style feed-forward inputs (dense then exact GELU) compute the GELU in the same call. reorder:
    reorder each weight once for the block (worth it when the block runs more than a few hundred tokens); the block
    must not change the weights."""
    swapped = {m: type(m) for m in module.modules() if type(m) is nn.Linear or _fusable(m)}
    for m, cls in swapped.items():
        m.__class__ = FastLinear if cls is nn.Linear else FUSED_GELU[cls]
    token = _ACTIVE.set({} if reorder else None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        for m, cls in swapped.items():
            m.__class__ = cls


__all__ = ["DENSE_THEN_ACTIVATION", "FastLinear", "ONEDNN_CACHE_VARIABLE", "PLAIN_LINEARS", "fast_linears", "is_exact_gelu",
           "limit_onednn_primitive_cache", "linear", "onednn_available", "use_fast_linears"]
