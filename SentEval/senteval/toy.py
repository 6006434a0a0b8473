"""The weight-free toy encoder of the spec (senteval.md section 11), for tests and docs:
256-dim float32 bag of words, index = crc32(token) % 256, after re-joining tokens with
spaces and lower-casing."""
from __future__ import annotations

import zlib

import numpy as np

DIM = 256


def bow_embed(sentences: list[str], dim: int = DIM) -> np.ndarray:
    out = np.zeros((len(sentences), dim), dtype=np.float32)
    for i, s in enumerate(sentences):
        for tok in s.lower().split():
            out[i, zlib.crc32(tok.encode("utf-8")) % dim] += 1
    return out


def bow_batcher(params, batch) -> np.ndarray:
    """SentEval batcher: batch = list of token lists."""
    return bow_embed([" ".join(tokens) for tokens in batch])
