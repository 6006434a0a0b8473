"""The FLOP model of an encoder step (matrix multiplies of the projections, feed-forward and attention) and
torch.mm's throughput at the same shapes, for the utilisation figure."""
from __future__ import annotations

import math
import time


# The feed-forward width by the names the architectures use (DistilBERT: hidden_dim).
INTERMEDIATE_FIELDS = ("intermediate_size", "hidden_dim")


def encoder_shapes(config) -> dict:
    intermediate = next(getattr(config, name) for name in INTERMEDIATE_FIELDS if isinstance(getattr(config, name, None), int))
    return {"hidden": int(config.hidden_size), "intermediate": int(intermediate), "layers": int(config.num_hidden_layers)}

def encoder_flops(shapes: dict, linear_tokens: int, attention_seq: list[int]) -> float:
    """Forward matmul FLOPs of the encoder: the layers' linears over `linear_tokens` rows and the
    attention products of sequences of the given (padded) lengths."""
    h, i, n = shapes["hidden"], shapes["intermediate"], shapes["layers"]
    per_token = 2 * (4 * h * h + 2 * h * i)
    attention = sum(4 * length * length * h for length in attention_seq)
    return n * (linear_tokens * per_token + attention)

def matmul_throughput(shapes: dict, tokens: int, repeat: int = 5) -> dict:
    """FLOP/s of torch.mm at the encoder's linear shapes (forward and both backward products), fastest of `repeat`."""
    import torch

    h, i = shapes["hidden"], shapes["intermediate"]
    tokens = max(1, int(tokens))
    gen = torch.Generator().manual_seed(0)
    products = []
    for d_in, d_out, count in ((h, 3 * h, 1), (h, h, 1), (h, i, 1), (i, h, 1)):  # qkv (fused), attn out, ffn in, ffn out
        x = torch.randn(tokens, d_in, generator=gen)
        w = torch.randn(d_out, d_in, generator=gen)
        g = torch.randn(tokens, d_out, generator=gen)
        products += [(x, w.t()), (g, w), (g.t(), x)]  # y = x W^T, dx = g W, dW = g^T x
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in products)
    for a, b in products:  # warm-up
        torch.mm(a, b)
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for a, b in products:
            torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return {"flops": flops, "seconds": best, "flop_per_s": flops / best, "tokens": tokens}

def last_layer_read_saving(shapes: dict, linear_tokens: float, rows: float, attention_seq: list[int]) -> float:
    """Forward matmul FLOPs the last layer does not run when only one token per sentence is read
    (packing.reading_positions: keys and values for all `linear_tokens`; query, attention output and feed-forward
    for `rows` tokens; in the attention one query per sequence of the given padded lengths)."""
    h, i = shapes["hidden"], shapes["intermediate"]
    full = linear_tokens * 2 * (4 * h * h + 2 * h * i) + sum(4 * length * length * h for length in attention_seq)
    read = linear_tokens * 2 * (2 * h * h) + rows * 2 * (2 * h * h + 2 * h * i) + sum(4 * length * h for length in attention_seq)
    return full - read


def read_saving_per_step(s: dict, linear_tokens: float) -> float:
    """last_layer_read_saving per step of a measured configuration `s` (0 unless its last layer ran for the read
    tokens only: packed, cls pooler)."""
    if not s.get("last_layer_reads"):
        return 0.0
    rows, lengths = s["rows"], s["lengths"]
    sequences = [L for r, L in zip(rows, lengths) for _ in range(r)]
    return (last_layer_read_saving(s["shapes"], linear_tokens, sum(rows) / len(rows), [])
            + last_layer_read_saving(s["shapes"], 0, 0, sequences) / len(rows))


def flops_report(s: dict, batch_size: int) -> dict:
    shapes = s["shapes"]
    rows, lengths = s["rows"], s["lengths"]
    sequences = [L for r, L in zip(rows, lengths) for _ in range(r)]
    attention = encoder_flops(shapes, 0, sequences) / len(rows)  # per step
    executed_tokens = s["tokens_per_step"] if s["packed_linear"] else s["padded_tokens_per_step"]
    executed = 3 * (encoder_flops(shapes, executed_tokens, []) + attention)
    useful = 3 * (encoder_flops(shapes, s["tokens_per_step"], []) + attention)
    saving = 3 * read_saving_per_step(s, executed_tokens)
    executed -= saving
    useful -= saving
    step = s["wall_s_per_step"]
    return {"executed_flop_per_step": executed, "useful_flop_per_step": useful,
            "achieved_flop_per_s": executed / step, "useful_flop_per_s": useful / step,
            "counted_tokens": "non-pad" if s["packed_linear"] else "padded",
            "last_layer_note": (", the last layer's query side, attention output and feed-forward on the [CLS] tokens only: "
                                "what it runs" if s.get("last_layer_reads") else "")}
