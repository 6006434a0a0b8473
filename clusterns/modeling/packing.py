"""Packed linear layers: each encoder layer's projections and feed-forward run on the non-pad tokens only.

A batch padded to its longest sentence pushes every pad position through every nn.Linear of the
backbone (query/key/value, attention output, intermediate, output), although no real token ever
depends on a pad position: attention masks the pad keys, LayerNorm / GELU / dropout act per token,
and the poolers read real tokens only. On the training corpus about a third of the positions of a
batch of 64 (max_seq_length 32) are padding (BENCHMARKS.md), so that third of the encoder's
matrix-multiply work is thrown away.

With packing on (``--packed_linear``, :func:`enable_packed_linear`), each BERT/RoBERTa/XLM-R/ELECTRA layer (and
DistilBERT's and MPNet's, the same computation under other module names: LAYER_SHAPES) does

    x   = h[non-pad]                       [T, H]   one gather (skipped when h came from the previous layer)
    qkv = x @ [Wq|Wk|Wv]^T + b             [T, 3H]  one matmul
    q,k,v -> padded [N, L, 3H] (zeros at pads)        one scatter
    a   = SDPA(q, k, v, key-padding mask)  [N, heads, L, d]  (attention keeps the padded layout)
    a   = a[non-pad]                       [T, H]   one gather
    y   = layer.attention.output(a, x); y = layer.output(layer.intermediate(y), y)   (HF modules, on [T, *])
    h'  = y -> padded [N, L, H]                       one scatter (zeros at pads)

so every Linear, LayerNorm, activation and dropout sees T rows instead of N*L (on the CPU T rounded up to a
multiple of CPU_ROUND_ROWS with a few pad positions as filler, which the scatters drop). The real tokens'
states, and therefore every pooler's output (cls, avg, avg_top2, avg_first_last, mask), equal the
unpacked backbone's to float tolerance (tests/test_packing.py), in eval and train mode, gradients
included; the pad positions of the returned hidden states are zeros instead of values nobody reads.
With dropout active the random masks differ from the unpacked run's (fewer elements are drawn),
not their distribution.

The key-padding pattern comes from the 2-D ``attention_mask`` the backbone is called with, captured
once per forward by a pre-hook. A forward without a 2-D mask
(e.g. PromptBERT's template-delta pass), without padding, with cross-attention / a cache, under
gradient checkpointing, or a layer of another shape, runs the unchanged Hugging Face code.
Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` whatever
``attn_implementation`` the backbone was loaded with (eager gives the same values to float tolerance).
Its layout (``--packed_attention``): ``padded`` (the sketch above; the CPU's default: with dropout it is SDPA's math
path, computed by hand with dropout.py's mask) or ``jagged`` (CUDA's default): SDPA on nested jagged tensors built
from the packed q/k/v, so no pad position is computed or masked and no scatter/gather surrounds the attention; on
CUDA it runs the flash / memory-efficient variable-length kernels, attention dropout included. Where the torch
build has no kernel for it, ``auto`` falls back to ``padded`` once, with a warning.

The last layer for the read tokens only (``--prune_last_layer``, on by default): a pooler that reads one last-layer
state per sentence (cls, cls_before_pooler: the first token; PromptBERT's mask: the mask token) declares its positions
(Pooler.read_positions -> reading_positions). The last layer then computes keys and values for every token, since
the read token attends to all of them, but its query, attention output, feed-forward and LayerNorms for the read
tokens only: for MiniLM at batch 64 / length 32 that is about 1/8 of the step's matrix FLOPs not spent on states
nobody reads. Those states equal the full layer's to float tolerance, gradients included; a forward asking for its
hidden states or attentions runs every token.

The index of the non-pad tokens comes from the collator (host_token_layout, passed through the batch and looked up
by known_index), so no forward runs a ``nonzero`` on the device; and the backbone is called without its 2-D mask
whenever its layers do not need it (packed, or no padding), which spares transformers' own mask building (its
all-ones check is a host sync).
"""
from __future__ import annotations

import contextlib
import logging
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clusterns.modeling.cpu_linear import PLAIN_LINEARS, FastLinear, linear
from clusterns.modeling.dropout import CpuDropout
from clusterns.modeling.dropout import dropout as cpu_dropout

logger = logging.getLogger(__name__)

PACKING_ATTR = "_clusterns_packing"
LAST_LAYER_ATTR = "_clusterns_last_layer"  # set on the encoder's last layer (read_positions)


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


LAYERS_RETURN_TUPLES = _transformers_major() < 5
# transformers 5 builds a backbone's 4-D mask with a host sync and reads no mask as "attend everywhere"; 4.x warns
# about padding without a mask (itself a sync), so there the packed backbone keeps its 2-D mask.
DROPS_UNREAD_MASK = not LAYERS_RETURN_TUPLES


# ---- gather / scatter of token rows with cheap backward passes ----------------------------------
class _Pack(torch.autograd.Function):
    """[R, D] -> [T, D]: the rows `index` (unique). Backward scatters into zeros (index_copy, no add)."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        return grad.new_zeros((ctx.rows, grad.shape[1])).index_copy_(0, index, grad.contiguous()), None


class _Unpack(torch.autograd.Function):
    """[T', D] -> [R, D]: zeros with the rows `index` [T] filled from the first T packed rows (the rows after them are
    dropped: their gradient is zero). Backward gathers the rows."""

    @staticmethod
    def forward(ctx, packed: Tensor, index: Tensor, rows: int) -> Tensor:
        ctx.save_for_backward(index)
        ctx.packed_rows = packed.shape[0]
        return packed.new_zeros((rows, packed.shape[1])).index_copy_(0, index, packed[:index.numel()])

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        tokens = index.numel()
        if ctx.packed_rows == tokens:
            return grad.index_select(0, index), None, None
        out = grad.new_empty((ctx.packed_rows, grad.shape[1]))
        torch.index_select(grad, 0, index, out=out[:tokens])
        out[tokens:].zero_()
        return out, None, None


def pack_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [R, D] -> x[index] [T, D] (index: unique flat row ids)."""
    return _Pack.apply(x, index)


def unpack_rows(packed: Tensor, index: Tensor, rows: int) -> Tensor:
    """packed [T', D] -> [rows, D] with zeros everywhere but the rows `index` [T], filled from packed[:T]."""
    return _Unpack.apply(packed, index, rows)


# ---- per-forward state ----------------------------------------------------------------------------
@dataclass
class PackedBatch:
    """The non-pad layout of one backbone call."""

    index: Tensor  # [T'] flat ids (row * L + position) of the rows the layers compute: the non-pad tokens, then filler
    key_mask: Tensor  # [N, 1, 1, L] bool, True = attend
    batch: int
    length: int
    # T, the non-pad tokens (index[:T], in order); the T' - T filler rows after them are pad positions, computed only to
    # give the linear layers a row count from a small set (round_rows) and dropped by every scatter
    real_tokens: int = -1
    last_out: Tensor | None = None  # the previous layer's padded output ...
    last_packed: Tensor | None = None  # ... and the packed tensor it was scattered from

    biases: dict = field(default_factory=dict)  # key_mask as an additive bias, per dtype (made once per forward)
    jagged: bool = False  # attention on the packed tokens (jagged_attention) instead of the padded layout
    read_positions: Tensor | None = None  # [N]: the only last-layer position the caller reads per sentence
    offsets: Tensor | None = None  # [N + 1] where each sentence starts in the packed rows (jagged attention)
    # without gradients, the padded q/k/v of one layer are dead once its attention is computed: the next layer
    # reuses the buffer (per width and dtype), whose pad rows stay zeros
    padded_buffers: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.real_tokens < 0:
            self.real_tokens = int(self.index.numel())
        self.token_index = self.index[:self.real_tokens]  # where the packed rows go back to (the filler is dropped)

    @property
    def tokens(self) -> int:
        return self.real_tokens

    def key_bias(self, dtype: torch.dtype) -> Tensor:
        """[N, 1, 1, L]: 0 where a key is attended, -inf at pads."""
        if dtype not in self.biases:
            self.biases[dtype] = torch.zeros(self.key_mask.shape, dtype=dtype, device=self.key_mask.device).masked_fill_(
                ~self.key_mask, float("-inf"))
        return self.biases[dtype]


# ---- the non-pad index, built on the host ----------------------------------------------------------
def host_token_layout(selected: Tensor) -> tuple[Tensor, list[int]]:
    """A CPU [..., L] 0/1 (bool) tensor -> (the flat ids row * L + position of its selected positions, over the tensor
    flattened to [rows, L]; each row's cumulative count, as host ints). What the collator computes once per batch
    (the non-pad tokens of the attention mask, the MLM's selected tokens), so that the device never runs a
    `nonzero()` (a host sync on a GPU: its output size depends on the data)."""
    flat = selected.reshape(-1, selected.shape[-1]).bool()
    return flat.reshape(-1).nonzero().squeeze(1), flat.sum(1).cumsum(0).tolist()


@dataclass(frozen=True, eq=False)  # eq=False: compared by identity (its tensors have no truth value)
class TokenLayout:
    """The selected positions of one batch tensor, as the collator computed them on the host (host_token_layout):
    `mask` is that tensor on the device (any shape [..., L]; the attention mask: its non-pad tokens; the MLM labels:
    the tokens to predict), `index` the flat ids of its selected positions (on the device), `row_ends` the cumulative
    counts per row of the tensor flattened to [rows, L] (host ints)."""

    mask: Tensor
    index: Tensor
    row_ends: tuple[int, ...]

    def index_for(self, mask: Tensor) -> Tensor | None:
        """The flat selected ids of `mask` when it is a run of whole rows of this layout's tensor (the tensor itself, a
        reshaped view, a slice of sentences: what the model and the gradient cache pass the backbone), else None.
        No device work beyond a slice (and a subtraction for a run not starting at row 0)."""
        length = self.mask.shape[-1]
        if (mask.dim() != 2 or mask.shape[1] != length or mask.dtype != self.mask.dtype or mask.device != self.mask.device
                or not mask.is_contiguous() or not self.mask.is_contiguous()
                or mask.untyped_storage().data_ptr() != self.mask.untyped_storage().data_ptr()):
            return None
        offset = mask.storage_offset() - self.mask.storage_offset()
        first = offset // length
        last = first + mask.shape[0]
        if offset % length or first < 0 or last > len(self.row_ends):
            return None
        start = self.row_ends[first - 1] if first else 0
        index = self.index[start:self.row_ends[last - 1] if last else 0]
        return index - first * length if first else index


_LAYOUTS: list[TokenLayout] = []  # the layouts of the batches being processed (known_token_layouts)


@contextlib.contextmanager
def known_token_layouts(layouts: list[TokenLayout]) -> Iterator[None]:
    """Inside, known_index() reads the selected ids of the layouts' tensors (and of views of their rows) from the
    layouts instead of running nonzero() on the device."""
    _LAYOUTS.extend(layouts)
    try:
        yield
    finally:
        for layout in layouts:
            _LAYOUTS.remove(layout)


def token_layouts(batch: dict[str, Any], entries: dict[str, tuple[Tensor, Any]] | None) -> list[TokenLayout]:
    """The TokenLayouts of a batch from the collator's entry {batch key: (index, row_ends)} (none without it)."""
    layouts = []
    for key, (index, row_ends) in (entries or {}).items():
        tensor = batch.get(key)
        if torch.is_tensor(tensor):
            layouts.append(TokenLayout(mask=tensor, index=index.to(tensor.device, non_blocking=True),
                                       row_ends=tuple(int(n) for n in row_ends)))
    return layouts


def keeping_token_layouts(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, run under the layouts known now wherever it is called later (the gradient cache replays chunks in the
    backward pass, after the forward's known_token_layouts has ended)."""
    layouts = list(_LAYOUTS)

    def run(*args: Any, **kwargs: Any) -> Any:
        with known_token_layouts(layouts):
            return fn(*args, **kwargs)

    return run


def known_index(tensor: Tensor, selected: Callable[[Tensor], Tensor] = lambda mask: mask) -> Tensor:
    """The flat ids (row * L + position) of the selected positions of a [rows, L] tensor: from a known layout when the
    tensor is (part of) one, else `selected(tensor).reshape(-1).nonzero()` (a host sync on a GPU). The default
    selects the non-zero entries (the non-pad tokens of an attention mask)."""
    for layout in reversed(_LAYOUTS):
        index = layout.index_for(tensor)
        if index is not None:
            return index
    return selected(tensor).reshape(-1).nonzero().squeeze(1)


def packed_batch(attention_mask: Tensor, index: Tensor | None = None, jagged: bool = False,
                 round_rows: int = 1) -> PackedBatch | None:
    """The PackedBatch of a 2-D 0/1 mask, or None when packing cannot save anything (no padding). `index`: the mask's
    known_index, when the caller has it. jagged: attention on the packed tokens (each row's tokens are consecutive
    packed rows wherever its pads are). round_rows: the layers compute a multiple of this many rows (the non-pad
    tokens, then as many of the first pad positions as needed, where the batch has them; ignored with jagged)."""
    if attention_mask.dim() != 2:
        return None
    n, length = attention_mask.shape
    index = known_index(attention_mask) if index is None else index
    tokens = index.numel()
    if tokens in (0, n * length):
        return None
    keep = attention_mask.bool()
    offsets = None
    if jagged:  # on the device, no host sync
        offsets = F.pad(keep.sum(1).cumsum(0), (1, 0))
    elif round_rows > 1 and 0 < -tokens % round_rows <= n * length - tokens:  # filler needed, and that many pads exist
        # the first pad positions, in order, by a stable sort (a fixed output size: no nonzero(), no host sync)
        pads_first = (~keep).reshape(-1).to(torch.uint8).argsort(descending=True, stable=True)
        index = torch.cat([index, pads_first[:-tokens % round_rows]])
    return PackedBatch(index=index, key_mask=keep[:, None, None, :], batch=n, length=length, jagged=jagged, offsets=offsets,
                       real_tokens=tokens)


ATTENTION_LAYOUTS = ("auto", "padded", "jagged")

# On the CPU the packed layers compute a multiple of this many rows (a few pad positions as filler, dropped by every
# scatter): oneDNN JIT-compiles linear-layer kernels per row count (a first call at a new count: about 5 ms more,
# with or without its primitive cache), and torch's allocator reuses blocks of equal sizes; with the raw token count
# every batch brings new sizes (peak RSS of MiniLM training with F.linear grew 1.4 -> 2.3 GB over 50 steps, flat at
# 1.8 GB with 64 rows; with oneDNN's products, 40 steps: 2.04-2.05 GB with 64 rows, 1.82 GB with 128, at the same
# step time). The filler costs 64 rows per batch on average, about 2% of MiniLM's batch of 64 x length 32 (2,700
# tokens).
CPU_ROUND_ROWS = 128


def jagged_attention(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, max_length: int, dropout: float, scale: float) -> Tensor:
    """Packed q, k, v [T, heads, d] -> [T, heads, d]: every sentence's tokens attend to its own tokens (rows
    offsets[i]:offsets[i+1]), no padding and no mask. SDPA on nested jagged tensors: on CUDA the flash /
    memory-efficient variable-length kernels (dropout included); on the CPU a loop over the sentences (slow: the
    padded layout is the CPU's default). max_length: an upper bound of the sentence lengths (no host sync)."""
    def nested(x: Tensor) -> Tensor:
        return torch.nested.nested_tensor_from_jagged(x, offsets, min_seqlen=1, max_seqlen=max_length).transpose(1, 2)

    out = F.scaled_dot_product_attention(nested(q), nested(k), nested(v), dropout_p=dropout, scale=scale)
    return out.transpose(1, 2).values()


@dataclass
class PackingController:
    """Attached to a backbone by enable_packed_linear: the stack of current PackedBatch (nested calls)."""

    enabled: bool = True
    stack: list = field(default_factory=list)
    calls: int = 0  # backbone forwards that ran packed (diagnostics / tests)
    read_position_calls: int = 0  # ... of which with the last layer at the read positions only (reading_positions)
    attention: str = "auto"  # ATTENTION_LAYOUTS: auto = jagged on CUDA, padded elsewhere
    jagged_failed: str | None = None  # why the jagged attention was given up (auto: once, then padded)
    prune_last_layer: bool = True  # honour reading_positions (--prune_last_layer)
    read_positions: Tensor | None = None  # for the next forward (reading_positions), then taken by its PackedBatch
    round_rows: int = CPU_ROUND_ROWS  # on the CPU (packed_batch's round_rows); 1: the token count as it is

    def jagged_for(self, device: torch.device) -> bool:
        if self.attention == "auto":
            return device.type == "cuda" and self.jagged_failed is None
        return self.attention == "jagged"

    def current(self) -> PackedBatch | None:
        return self.stack[-1] if self.enabled and self.stack else None


@contextlib.contextmanager
def reading_positions(backbone: nn.Module, positions: Tensor | None) -> Iterator[None]:
    """Declare that the next forward of `backbone` inside is read at its last layer only at `positions` ([N] long,
    one position per sentence: what the cls and mask poolers read) and returns no other state (no hidden states,
    no attentions). A packed backbone then computes the last layer's query side for those tokens only
    (_read_positions_layer); its last_hidden_state holds zeros elsewhere. Nothing changes for a backbone that is
    not packed, a forward that does not run packed (no padding) or one that asks for its hidden states."""
    controller = getattr(backbone, PACKING_ATTR, None)
    if positions is None or not isinstance(controller, PackingController):
        yield
        return
    previous, controller.read_positions = controller.read_positions, positions
    try:
        yield
    finally:
        controller.read_positions = previous


def _checkpointing(module: nn.Module) -> bool:
    """Gradient (activation) checkpointing recomputes the layers in backward, outside this forward's state."""
    if "is_activation_checkpointing" in dir(type(module)):  # transformers >= 5 (the old name warns)
        return bool(module.is_activation_checkpointing)
    return bool(getattr(module, "is_gradient_checkpointing", False))


def _pre_hook(controller: PackingController, module: nn.Module, args: tuple, kwargs: dict):
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]
    state, all_attended = None, False
    blocked = any(kwargs.get(k) is not None for k in ("encoder_hidden_states", "past_key_values", "inputs_embeds"))
    if controller.enabled and isinstance(mask, Tensor) and mask.dim() == 2 and not blocked and not _checkpointing(module):
        index = known_index(mask)
        all_attended = index.numel() == mask.numel()
        state = packed_batch(mask, index, jagged=controller.jagged_for(mask.device),
                             round_rows=controller.round_rows if mask.device.type == "cpu" else 1)
        if state is not None:
            controller.calls += 1
    positions, controller.read_positions = controller.read_positions, None  # for this forward only, not nested ones
    if state is not None and positions is not None and controller.prune_last_layer and not _returns_every_state(module, kwargs):
        if positions.shape != (state.batch,):
            raise ValueError(f"read positions must be one per sentence, shape ({state.batch},); got {tuple(positions.shape)}")
        state.read_positions = positions
        controller.read_position_calls += 1
    controller.stack.append(state)
    # The backbone need not build its 4-D mask (which in transformers 5 also asks the device whether the mask is all
    # ones: a host sync per forward) when every layer runs packed and reads the key mask from `state`, or when no token
    # is padding (explicit position ids keep the mask: transformers reads jumps in them as packed sequences without one).
    keeps_mask = (not DROPS_UNREAD_MASK or kwargs.get("output_attentions")
                  or getattr(getattr(module, "config", None), "output_attentions", False))
    if not keeps_mask and (state is not None or (all_attended and kwargs.get("position_ids") is None)):
        if "attention_mask" in kwargs:
            kwargs = dict(kwargs, attention_mask=None)
        else:
            args = args[:1] + (None,) + args[2:]
        return args, kwargs
    return None


def _returns_every_state(module: nn.Module, kwargs: dict) -> bool:
    """Whether this forward returns hidden states or attentions beyond the last layer's (asked, or the config's default)."""
    config = getattr(module, "config", None)
    return any(kwargs.get(key) if kwargs.get(key) is not None else getattr(config, key, False)
               for key in ("output_hidden_states", "output_attentions"))


def _post_hook(controller: PackingController, module: nn.Module, args: tuple, kwargs: dict, output: Any):
    if controller.stack:
        controller.stack.pop()
    return None


# ---- the packed layer forward ---------------------------------------------------------------------
class LayerShape:
    """One encoder-layer layout the packed forward knows: where its layers are, its q/k/v projections, and what
    follows the attention (output projection, residuals, LayerNorms, feed-forward), all per token."""

    name = ""

    def layers(self, backbone: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def unsupported(self, layer: nn.Module) -> str | None:
        """None when `layer` has this shape, else why not."""
        raise NotImplementedError

    def attention(self, layer: nn.Module) -> nn.Module:
        """The module holding query/key/value (attributes named by qkv_names) and the head layout."""
        raise NotImplementedError

    qkv_names: tuple[str, str, str] = ("query", "key", "value")

    def heads(self, layer: nn.Module) -> tuple[int, int]:
        sa = self.attention(layer)
        return sa.num_attention_heads, sa.attention_head_size

    def attention_dropout(self, layer: nn.Module) -> float:
        return self.attention(layer).dropout.p

    def after_attention(self, layer: nn.Module, attn: Tensor, x: Tensor) -> Tensor:
        """[T, H] attention output (heads merged) and the layer input -> the layer output, [T, H]."""
        raise NotImplementedError

    returns_tuple = False  # whether the encoder reads layer(...)[0] (transformers 4.x: every layout)

    def split_extra(self, args: tuple, kwargs: dict) -> tuple[Tensor | None, tuple, dict]:
        """The layer call's extra arguments -> (an additive attention bias [N, heads, L, L] or None, the arguments
        left, which must all be None for the packed forward)."""
        return None, args, kwargs


class BertLayerShape(LayerShape):
    """BERT, RoBERTa, XLM-R, ELECTRA: encoder.layer[i].attention.self.{query,key,value}, attention.output,
    intermediate, output."""

    name = "bert"

    def layers(self, backbone):
        layers = getattr(getattr(backbone, "encoder", None), "layer", None)
        return list(layers) if isinstance(layers, nn.ModuleList) else []

    def unsupported(self, layer):
        try:
            sa = layer.attention.self
            parts = (sa.query, sa.key, sa.value, layer.attention.output.dense, layer.attention.output.LayerNorm,
                     layer.intermediate.dense, layer.output.dense, layer.output.LayerNorm)
        except AttributeError as err:
            return f"not a BERT-style layer ({err})"
        if not all(isinstance(p, nn.Module) for p in parts):
            return "not a BERT-style layer"
        if getattr(layer, "is_decoder", False) or getattr(layer, "add_cross_attention", False):
            return "decoder / cross-attention layer"
        if getattr(layer, "chunk_size_feed_forward", 0):
            return "chunked feed-forward"
        if getattr(sa, "position_embedding_type", "absolute") not in ("absolute", None):
            return "relative position attention"
        if not hasattr(sa, "num_attention_heads") or not hasattr(sa, "attention_head_size"):
            return "unknown attention head layout"
        return None

    def attention(self, layer):
        return layer.attention.self

    def after_attention(self, layer, attn, x):
        y = layer.attention.output(attn, x)  # dense, dropout, LayerNorm(. + x)
        return layer.output(layer.intermediate(y), y)


class DistilBertLayerShape(LayerShape):
    """DistilBERT: transformer.layer[i].attention.{q_lin,k_lin,v_lin,out_lin}, sa_layer_norm, ffn,
    output_layer_norm (no dropout after out_lin, as its TransformerBlock)."""

    name = "distilbert"
    qkv_names = ("q_lin", "k_lin", "v_lin")

    def layers(self, backbone):
        layers = getattr(getattr(backbone, "transformer", None), "layer", None)
        return list(layers) if isinstance(layers, nn.ModuleList) else []

    def unsupported(self, layer):
        try:
            parts = (layer.attention.q_lin, layer.attention.k_lin, layer.attention.v_lin, layer.attention.out_lin,
                     layer.sa_layer_norm, layer.ffn, layer.output_layer_norm)
        except AttributeError as err:
            return f"not a DistilBERT-style layer ({err})"
        if not all(isinstance(p, nn.Module) for p in parts):
            return "not a DistilBERT-style layer"
        if getattr(layer.ffn, "chunk_size_feed_forward", 0):
            return "chunked feed-forward"
        return None

    def attention(self, layer):
        return layer.attention

    def heads(self, layer):
        sa = layer.attention
        size = getattr(sa, "attention_head_size", None) or sa.dim // sa.n_heads
        return sa.n_heads, size

    def after_attention(self, layer, attn, x):
        y = layer.sa_layer_norm(layer.attention.out_lin(attn) + x)
        return layer.output_layer_norm(layer.ffn(y) + y)


class MPNetLayerShape(BertLayerShape):
    """MPNet: BERT's intermediate/output, attention.attn.{q,k,v,o} then attention.LayerNorm(dropout(o) + x), and a
    relative position bias (computed once by its encoder, passed to every layer) added to the attention scores."""

    name = "mpnet"
    qkv_names = ("q", "k", "v")
    returns_tuple = True

    def unsupported(self, layer):
        try:
            attn = layer.attention.attn
            parts = (attn.q, attn.k, attn.v, attn.o, layer.attention.LayerNorm, layer.attention.dropout,
                     layer.intermediate.dense, layer.output.dense, layer.output.LayerNorm)
        except AttributeError as err:
            return f"not an MPNet-style layer ({err})"
        if not all(isinstance(p, nn.Module) for p in parts):
            return "not an MPNet-style layer"
        return None

    def attention(self, layer):
        return layer.attention.attn

    def after_attention(self, layer, attn, x):
        y = layer.attention.LayerNorm(layer.attention.dropout(layer.attention.attn.o(attn)) + x)
        return layer.output(layer.intermediate(y), y)

    def split_extra(self, args, kwargs):
        kwargs = dict(kwargs)
        bias = kwargs.pop("position_bias", None)
        if args:
            bias, args = args[0], args[1:]
        return bias, args, kwargs


# The layer layouts tried in order: the first whose layers all fit is used.
LAYER_SHAPES: tuple[LayerShape, ...] = (BertLayerShape(), MPNetLayerShape(), DistilBertLayerShape())


def _supported_layer(layer: nn.Module, shape: LayerShape | None = None) -> str | None:
    """None if `layer` has the BERT/RoBERTa layer shape (or `shape`) the packed forward needs, else why not."""
    return (shape or LAYER_SHAPES[0]).unsupported(layer)


def _project(sa: nn.Module, x: Tensor, names: tuple[str, ...] = ("query", "key", "value")) -> Tensor:
    """[T, H] -> the projections `names` of `sa` side by side, [T, len(names) * all_head_size]: one matmul when they
    are plain nn.Linear."""
    projections = [getattr(sa, name) for name in names]
    if len(projections) == 1:
        return projections[0](x)
    if all(type(p) in PLAIN_LINEARS for p in projections):
        weight = torch.cat([p.weight for p in projections], dim=0)
        biases = [p.bias for p in projections]
        key = tuple(id(p.weight) for p in projections)  # the concatenation is new each call; its sources are not
        trained = all(type(p) is FastLinear for p in projections)  # their own forward would use oneDNN in training
        if all(b is None for b in biases):
            return linear(x, weight, key=key, trained=trained)
        if all(b is not None for b in biases):
            return linear(x, weight, torch.cat(biases), key=key, trained=trained)
    return torch.cat([p(x) for p in projections], dim=-1)


# Without dropout on the CPU, sentences up to this length take the math path (two batched matmuls and a softmax)
# instead of SDPA's flash kernel: measured per 2048 tokens (12 heads of 32) 1.0 vs 3.8 ms at length 16, 1.9 vs
# 3.3 ms at 32, 2.5 vs 3.7 ms at 48; the flash kernel wins on long ones (length 80: 24 vs 43 ms for 128 sentences).
CPU_MATH_ATTENTION_MAX_LENGTH = 64


def attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, p: float, scale: float) -> Tensor:
    """softmax(q k^T * scale + bias) with dropout p, times v: what SDPA's math path computes, with dropout.py's mask.
    bias: additive (0 / -inf), broadcastable to [N, heads, L, L]."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale).add_(bias)
    return torch.matmul(cpu_dropout(scores.softmax(-1), p), v)


def packed_layer(layer: nn.Module, hidden_states: Tensor, state: PackedBatch, shape: LayerShape | None = None,
                 attention_bias: Tensor | None = None) -> Tensor:
    shape = shape or LAYER_SHAPES[0]
    n, length, hidden = hidden_states.shape
    rows = n * length
    index = state.index
    if state.last_out is hidden_states and state.last_packed is not None:
        x = state.last_packed  # the previous layer's packed output: no gather
    else:
        x = pack_rows(hidden_states.reshape(rows, hidden), index)
    sa = shape.attention(layer)
    heads, head_dim = shape.heads(layer)
    dropout = shape.attention_dropout(layer) if layer.training else 0.0
    scale = getattr(sa, "scaling", head_dim ** -0.5)  # transformers 4.x has no `scaling` attribute
    if state.read_positions is not None and getattr(layer, LAST_LAYER_ATTR, False):
        state.last_out = state.last_packed = None
        return _read_positions_layer(layer, x, state, shape, attention_bias, dropout, scale)
    packed_qkv = _project(sa, x, shape.qkv_names)
    attn = None
    if state.jagged and attention_bias is None:
        attn = _jagged_or_none(layer, state, packed_qkv.view(-1, 3, heads, head_dim), dropout, scale)
    if attn is None:
        attn = _padded_attention(sa, state, packed_qkv.view(-1, 3, heads, head_dim), attention_bias, dropout, scale)
    y = shape.after_attention(layer, attn.reshape(-1, heads * head_dim), x)
    out = unpack_rows(y, state.token_index, rows).view(n, length, y.shape[-1])
    state.last_out, state.last_packed = out, y
    return out


def _padded_attention(sa: nn.Module, state: PackedBatch, qkv: Tensor, attention_bias: Tensor | None,
                      dropout: float, scale: float) -> Tensor:
    """Packed q/k/v [T, 3, heads, d] -> the packed attention output [T, heads * d], computed on the padded layout
    (scattered to [N, L], pads masked as keys)."""
    heads, head_dim = qkv.shape[2:]
    q, k, v = _padded_heads(state, qkv)
    attn = _attend(sa, state, q, k, v, attention_bias, dropout, scale)
    return pack_rows(attn.transpose(1, 2).reshape(state.batch * state.length, heads * head_dim), state.index)


def _padded_heads(state: PackedBatch, packed: Tensor) -> tuple[Tensor, ...]:
    """Packed projections [T, parts, heads, d] -> one [N, heads, L, d] tensor per part, on the padded layout (zeros
    at the pads)."""
    parts, heads, head_dim = packed.shape[1:]
    n, length = state.batch, state.length
    rows = packed.reshape(packed.shape[0], -1)
    if torch.is_grad_enabled():
        full = unpack_rows(rows, state.token_index, n * length)
    else:  # no graph keeps the padded copy: one zeroed buffer per width serves every layer (the pads stay zeros)
        key = (rows.shape[1], rows.dtype)
        if key not in state.padded_buffers:
            state.padded_buffers[key] = rows.new_zeros((n * length, rows.shape[1]))
        full = state.padded_buffers[key].index_copy_(0, state.token_index, rows[:state.tokens])
    full = full.view(n, length, parts, heads, head_dim)
    return tuple(t.transpose(1, 2) for t in full.unbind(2))


def _attend(sa: nn.Module, state: PackedBatch, q: Tensor, k: Tensor, v: Tensor, attention_bias: Tensor | None,
            dropout: float, scale: float) -> Tensor:
    """q [N, heads, Lq, d] over k, v [N, heads, L, d], the pad keys masked -> [N, heads, Lq, d]. attention_bias:
    MPNet's relative position bias [N, heads, Lq, L], or None."""
    mask = state.key_mask
    if attention_bias is not None:  # MPNet's relative position bias, pads as keys masked out
        mask = attention_bias.to(q.dtype).masked_fill(~state.key_mask, float("-inf"))
    fast_dropout = dropout and isinstance(getattr(sa, "dropout", None), CpuDropout)
    if q.device.type == "cpu" and (fast_dropout or (not dropout and state.length <= CPU_MATH_ATTENTION_MAX_LENGTH)):
        # --fast_dropout: SDPA's CPU path (the math one: dropout rules out the flash kernel) with the cheaper mask;
        # without dropout, on short sentences, the math path too: faster than the CPU flash kernel there
        return attention_with_dropout(q, k, v, state.key_bias(q.dtype) if attention_bias is None else mask, dropout, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)


def _read_positions_layer(layer: nn.Module, x: Tensor, state: PackedBatch, shape: LayerShape,
                          attention_bias: Tensor | None, dropout: float, scale: float) -> Tensor:
    """The last layer when the caller reads its output at one position per sentence (state.read_positions, e.g. the
    cls pooler's first token): keys and values of every token, but the query, the attention output, the feed-forward
    and the LayerNorms of those tokens only (no other token's last-layer state is read; for MiniLM that is 5/6 of
    the last layer's matrix work). Returns [N, L, H], zeros but at the read positions (and zeros there too where the
    position is a pad, as the packed layers' pads)."""
    n, length = state.batch, state.length
    sa = shape.attention(layer)
    heads, head_dim = shape.heads(layer)
    positions = state.read_positions
    sentences = torch.arange(n, device=x.device)
    flat = sentences * length + positions  # [N] flat ids read
    attended = state.key_mask.reshape(-1)
    valid = attended[flat]
    # their packed rows: the index is sorted, so a flat id's row is the number of attended ids before it
    rows = (attended.cumsum(0)[flat] - 1).clamp_(min=0)
    x_read = x.index_select(0, rows)  # not pack_rows: an invalid (pad) position may repeat a row
    q = _project(sa, x_read, shape.qkv_names[:1]).view(n, heads, 1, head_dim)
    k, v = _padded_heads(state, _project(sa, x, shape.qkv_names[1:]).view(-1, 2, heads, head_dim))
    if attention_bias is not None:  # the read position's row of MPNet's bias: [N, heads, 1, L]
        attention_bias = attention_bias.expand(n, -1, -1, -1)[sentences, :, positions].unsqueeze(2)
    attn = _attend(sa, state, q, k, v, attention_bias, dropout, scale).reshape(n, heads * head_dim)
    y = shape.after_attention(layer, attn, x_read)
    y = torch.where(valid.unsqueeze(1), y, y.new_zeros(()))
    return unpack_rows(y, flat, n * length).view(n, length, y.shape[-1])


def _jagged_or_none(layer: nn.Module, state: PackedBatch, qkv: Tensor, dropout: float, scale: float) -> Tensor | None:
    """jagged_attention of packed [T, 3, heads, d]; None (and the padded layout from then on) where this torch build
    has no kernel for it under --packed_attention auto. --packed_attention jagged raises instead."""
    controller: PackingController = getattr(layer, PACKING_ATTR)
    q, k, v = qkv.transpose(0, 1).contiguous().unbind(0)  # nested jagged tensors need contiguous values
    try:
        return jagged_attention(q, k, v, state.offsets, state.length, dropout, scale)
    except (RuntimeError, NotImplementedError) as err:
        if controller.attention == "jagged":
            raise
        controller.jagged_failed = f"{type(err).__name__}: {err}"
        logger.warning("attention on the packed tokens failed (%s); the padded layout is used from now on",
                       controller.jagged_failed.splitlines()[0][:200])
        state.jagged = False
        return None


def _layer_forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, *args: Any, **kwargs: Any):
    controller: PackingController = getattr(self, PACKING_ATTR)
    shape: LayerShape = self._clusterns_layer_shape
    state = controller.current()
    bias, rest, rest_kwargs = shape.split_extra(args, kwargs)
    extra = any(a is not None for a in rest) or any(
        rest_kwargs.get(k) is not None for k in ("encoder_hidden_states", "encoder_attention_mask", "past_key_values")
    ) or rest_kwargs.get("output_attentions")
    if state is None or extra or hidden_states.dim() != 3 or hidden_states.shape[:2] != (state.batch, state.length):
        return self._clusterns_unpacked_forward(hidden_states, attention_mask, *args, **kwargs)
    out = packed_layer(self, hidden_states, state, shape, bias)
    # transformers 4.x encoders (and MPNet's) read `layer(...)[0]`; 5.x layers return the tensor itself
    return (out,) if LAYERS_RETURN_TUPLES or shape.returns_tuple else out


def _encoder_layers(backbone: nn.Module) -> tuple[LayerShape | None, list[nn.Module]]:
    """The first layout whose layers all fit, else the first with a layer list (its reasons are reported)."""
    first = None
    for shape in LAYER_SHAPES:
        layers = shape.layers(backbone)
        if layers and not any(shape.unsupported(layer) for layer in layers):
            return shape, layers
        if layers and first is None:
            first = (shape, layers)
    return first or (None, [])


def enable_packed_linear(backbone: nn.Module, attention: str = "auto", prune_last_layer: bool = True) -> bool:
    """Run `backbone`'s layers on packed non-pad tokens (see the module doc). Returns False, leaving the
    model unchanged, when it is not a BERT/RoBERTa-style encoder. Idempotent; parameters, state_dict
    keys and saved checkpoints are unchanged. attention: ATTENTION_LAYOUTS (auto: jagged on CUDA, padded elsewhere).
    prune_last_layer: honour reading_positions (the last layer for the read tokens only)."""
    if attention not in ATTENTION_LAYOUTS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_LAYOUTS)}, got {attention!r}")
    controller = getattr(backbone, PACKING_ATTR, None)
    if isinstance(controller, PackingController):
        controller.enabled = True
        controller.attention = attention
        controller.prune_last_layer = prune_last_layer
        return True
    shape, layers = _encoder_layers(backbone)
    reasons = [r for r in (shape.unsupported(layer) for layer in layers) if r] if shape else []
    if getattr(getattr(backbone, "config", None), "is_decoder", False):
        reasons.append("decoder model")
    if not layers or reasons:
        why = reasons[0] if reasons else "no encoder.layer (BERT) or transformer.layer (DistilBERT) list"
        logger.info("packed linear layers not used for %s: %s", type(backbone).__name__, why)
        return False
    controller = PackingController(attention=attention, prune_last_layer=prune_last_layer)
    for layer in layers:
        layer._clusterns_unpacked_forward = layer.forward
        layer._clusterns_layer_shape = shape
        setattr(layer, PACKING_ATTR, controller)
        layer.forward = types.MethodType(_layer_forward, layer)
    layers[-1].__dict__[LAST_LAYER_ATTR] = True
    backbone.__dict__[PACKING_ATTR] = controller
    # The hooks read the controller from the module they run on, so a deep copy of the backbone uses its own (the
    # copied layers read the copied controller: one stack for both).
    backbone.__dict__["_clusterns_packing_hooks"] = (
        backbone.register_forward_pre_hook(lambda m, a, k: _pre_hook(getattr(m, PACKING_ATTR), m, a, k), with_kwargs=True),
        backbone.register_forward_hook(lambda m, a, k, o: _post_hook(getattr(m, PACKING_ATTR), m, a, k, o), with_kwargs=True,
                                       always_call=True),
    )
    return True


def disable_packed_linear(backbone: nn.Module) -> None:
    """Undo enable_packed_linear (the plain Hugging Face forward again)."""
    controller = backbone.__dict__.pop(PACKING_ATTR, None)
    if controller is None:
        return
    for handle in backbone.__dict__.pop("_clusterns_packing_hooks", ()):
        handle.remove()
    for layer in _encoder_layers(backbone)[1]:
        if "_clusterns_unpacked_forward" in layer.__dict__:
            del layer.__dict__["forward"]
            del layer.__dict__["_clusterns_unpacked_forward"]
            layer.__dict__.pop("_clusterns_layer_shape", None)
            layer.__dict__.pop(PACKING_ATTR, None)
            layer.__dict__.pop(LAST_LAYER_ATTR, None)


def is_packed(backbone: nn.Module) -> bool:
    controller = getattr(backbone, PACKING_ATTR, None)
    return isinstance(controller, PackingController) and controller.enabled


__all__ = ["ATTENTION_LAYOUTS", "PackedBatch", "PackingController", "TokenLayout", "disable_packed_linear", "enable_packed_linear",
           "host_token_layout", "is_packed", "jagged_attention", "keeping_token_layouts", "known_index", "known_token_layouts", "pack_rows",
           "packed_batch", "packed_layer", "reading_positions", "token_layouts", "unpack_rows"]
