"""The CUDA paths (skipped without a GPU; scripts/bench_gpu.py runs `pytest -m cuda` on the GPU machine): encode()
under bf16 autocast close to fp32, a mixed-precision training step of every objective finite, the default mixed
precision on a GPU."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clusterns.cli.train import train_main
from clusterns.modeling.encoder import SentenceEncoder
from clusterns.precision import auto_mixed_precision_flag, resolve_precision

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_encode_auto_precision_on_cuda_is_close_to_fp32(tiny_bert):
    encoder = SentenceEncoder.from_pretrained(str(tiny_bert), pooler="avg", device="cuda")
    sentences = ["a man is playing a guitar .", "the dog runs in the street", "two people are sitting on a bus ."] * 20
    full = encoder.encode(sentences, autocast_precision="fp32")
    half = encoder.encode(sentences, autocast_precision="auto")
    assert resolve_precision("auto", "cuda") in ("bf16", "fp16") and half.dtype == np.float32
    cos = (half * full).sum(1) / np.linalg.norm(half, axis=1) / np.linalg.norm(full, axis=1)
    assert cos.min() > 0.99


@pytest.mark.parametrize("objective", ["infonce", "clusterns", "mixcse"])
def test_mixed_precision_training_step_on_cuda(objective, tiny_bert, tiny_corpus, tmp_path):
    flag = auto_mixed_precision_flag(False, False, use_cpu=False)
    assert flag in ("--bf16", "--fp16")
    extra = ["--kmeans", "4", "--kmean_cosine", "1.0"] if objective == "clusterns" else []
    metrics = train_main(["--model_name_or_path", str(tiny_bert), "--train_file", str(tiny_corpus), "--output_dir", str(tmp_path / "run"),
                          "--objective", objective, *extra, "--per_device_train_batch_size", "16", "--max_steps", "3",
                          "--report_to", "none", "--save_strategy", "no", "--do_train"])
    assert math.isfinite(metrics["train_loss"])
