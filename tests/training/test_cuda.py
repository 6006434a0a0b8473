"""The CUDA paths (skipped without a GPU; scripts/bench_gpu.py runs `pytest -m cuda` on the GPU machine): encode()
under bf16 autocast close to fp32, a mixed-precision training step of every objective finite, the default mixed
precision on a GPU, the jagged attention, no host sync per step, the deferred non-finite check."""
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


def test_jagged_attention_runs_and_equals_the_padded_layout_on_cuda(tiny_bert):
    """CUDA's default --packed_attention (auto = jagged): the variable-length kernels run (no fallback) and give the
    padded layout's vectors and gradients, under bf16 autocast as the training runs it."""
    import copy

    from clusterns.modeling.encoder import EncoderConfig
    from clusterns.modeling.packing import enable_packed_linear

    padded = SentenceEncoder.from_backbone(str(tiny_bert), EncoderConfig(pooler_type="avg")).cuda()
    jagged = copy.deepcopy(padded)
    assert enable_packed_linear(padded.backbone, attention="padded") and enable_packed_linear(jagged.backbone, attention="auto")
    batch = padded.tokenizer(["a man is playing a guitar .", "two dogs", "the cat is eating food on the table"] * 4,
                             padding=True, return_tensors="pt").to("cuda")
    for module in (padded, jagged):
        module.train()
        for m in module.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a = padded(batch["input_ids"], batch["attention_mask"])
        b = jagged(batch["input_ids"], batch["attention_mask"])
    assert jagged.backbone._clusterns_packing.jagged_failed is None
    torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=3e-2)
    a.float().sum().backward()
    b.float().sum().backward()
    for (name, pa), pb in zip(padded.named_parameters(), jagged.parameters()):
        if pa.grad is not None:
            scale = pa.grad.abs().max().clamp_min(1e-3)
            assert (pa.grad - pb.grad).abs().max() <= 5e-2 * scale, name


def test_training_step_has_no_host_sync_on_cuda(tiny_bert, tiny_corpus, tmp_path):
    """The GPU-ready step where it matters: bf16, --nan_check auto (deferred on CUDA), jagged attention; device-to-host
    copies are visible here too."""
    from clusterns.training.host_syncs import CountHostSyncsCallback
    from clusterns.training.run import build_run

    counter = CountHostSyncsCallback()
    run = build_run(["--model_name_or_path", str(tiny_bert), "--train_file", str(tiny_corpus), "--output_dir", str(tmp_path / "run"),
                     "--per_device_train_batch_size", "16", "--max_steps", "4", "--bf16", "--report_to", "none",
                     "--save_strategy", "no", "--logging_steps", "100", "--disable_tqdm", "true"], callbacks=[counter])
    run.trainer.train()
    assert run.trainer.nan_guard.deferred
    assert counter.per_step == [0, 0, 0, 0], counter.counter.where[:2]


def test_deferred_skip_on_cuda_leaves_the_weights(tiny_bert, tiny_corpus, tmp_path, monkeypatch):
    """A NaN loss at step 2 on CUDA: the fused AdamW's found_inf skips the update on the device."""
    import json

    from safetensors.torch import load_file

    from clusterns.objectives.base import ObjectiveOutput
    from clusterns.objectives.infonce import InfoNCEObjective

    original, calls = InfoNCEObjective.forward, {"n": 0}

    def forward(self, views, batch, encoder):
        out = original(self, views, batch, encoder)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 2:
                return ObjectiveOutput(loss=out.loss * float("nan"), logs=out.logs)
        return out

    monkeypatch.setattr(InfoNCEObjective, "forward", forward)
    out = tmp_path / "run"
    train_main(["--model_name_or_path", str(tiny_bert), "--train_file", str(tiny_corpus), "--output_dir", str(out),
                "--per_device_train_batch_size", "8", "--max_steps", "3", "--bf16", "--report_to", "none", "--save_steps", "1",
                "--logging_steps", "3", "--nan_policy", "skip", "--disable_tqdm", "true"])
    w1, w2 = (load_file(str(out / f"checkpoint-{s}" / "model.safetensors")) for s in (1, 2))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    state = json.loads((out / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "nonfinite" in h] == [2]
