"""Numerical precision: fp32 regions for the losses under mixed precision, and the TF32 default.

Under `--fp16` / `--bf16` the Trainer runs the model forward inside `torch.autocast`, which executes
every matmul in half precision *even on fp32 inputs* (`.float()` does not protect a matmul inside an
autocast region). Similarity logits are cosines divided by a temperature of 0.05: a cosine rounded to
bf16 (8 bits of mantissa) moves a logit by up to ~0.08. So the objectives run in `fp32_region`:
autocast off, and on CUDA TF32 off for matmuls, so the logits, the cross-entropy and the clustering
state are computed in full fp32 whatever the training precision (the encoder itself stays in mixed
precision; the extra cost is a few [B, B] / [B, K] products).

Mixed precision: on a CUDA GPU a run without --fp16/--bf16 gets --bf16 (Ampere and newer) or --fp16
(`auto_mixed_precision_flag`, applied by train.py's argument parsing; --auto_mixed_precision false keeps fp32).

TF32: on Ampere and newer GPUs, fp32 matmuls (and cuDNN convolutions) use TF32 unless `--tf32 false`
(`configure_tf32`, called by train.py). HF's `--tf32 true/false` keeps its meaning; only the default
(flag not given) is ours: on where supported. The objectives' `fp32_region` turns it off locally.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch

logger = logging.getLogger(__name__)


def _new_api() -> bool:
    """torch >= 2.9: per-backend `fp32_precision` ("ieee" / "tf32"); mixing it with the legacy
    `allow_tf32` flags makes torch raise, so only one API is ever used."""
    return hasattr(torch.backends.cuda.matmul, "fp32_precision")


def cuda_tf32_supported() -> bool:
    """A CUDA device of compute capability >= 8 (Ampere) is present."""
    try:
        return bool(torch.cuda.is_available() and torch.version.cuda is not None
                    and torch.cuda.get_device_properties(torch.cuda.current_device()).major >= 8)
    except Exception:  # noqa: BLE001 - a broken driver means: no TF32
        return False


def set_cuda_tf32(enabled: bool) -> None:
    if _new_api():
        mode = "tf32" if enabled else "ieee"
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def cuda_tf32_enabled() -> bool:
    if _new_api():
        return torch.backends.cuda.matmul.fp32_precision == "tf32"
    return bool(torch.backends.cuda.matmul.allow_tf32)


def configure_tf32(tf32: bool | None) -> bool:
    """The TF32 default of train.py: `tf32` is HF's `--tf32` (None when not given).

    None -> on where supported (returns True), nothing on CPU; True / False were already applied by HF's
    TrainingArguments (it raises for --tf32 true without an Ampere GPU). Returns whether TF32 is on."""
    if tf32 is None:
        if cuda_tf32_supported():
            set_cuda_tf32(True)
            logger.info("TF32 matmuls enabled (Ampere or newer GPU; --tf32 false to disable); losses stay in full fp32")
            return True
        return False
    return bool(tf32) and cuda_tf32_supported()


def auto_mixed_precision_flag(fp16: bool, bf16: bool, use_cpu: bool, cuda_available: bool | None = None,
                              bf16_supported: bool | None = None) -> str | None:
    """The flag --auto_mixed_precision adds: None when the run already chose (--fp16/--bf16) or runs on the
    CPU; else --bf16 on a GPU that supports it (Ampere and newer: same range as fp32, no loss scaling),
    --fp16 on older GPUs."""
    if fp16 or bf16 or use_cpu:
        return None
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return "--bf16" if bf16_supported else "--fp16"


@contextlib.contextmanager
def _no_cuda_tf32() -> Iterator[None]:
    if not cuda_tf32_enabled():
        yield
        return
    set_cuda_tf32(False)
    try:
        yield
    finally:
        set_cuda_tf32(True)


@contextlib.contextmanager
def fp32_region(device_type: str) -> Iterator[None]:
    """Autocast off (and CUDA TF32 off) inside: fp32 tensors are multiplied in fp32.

    Callers still cast half-precision inputs with `.float()`."""
    with torch.autocast(device_type=device_type, enabled=False):
        if device_type == "cuda":
            with _no_cuda_tf32():
                yield
        else:
            yield


# ---- inference precision (encode(), evaluation.py --precision) ----------------------------------------
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device_type: str, bf16_supported: bool | None = None, flag: str = "precision") -> str:
    """--precision -> the one used: `auto` is bf16 on a CUDA GPU that supports it (Ampere and newer), fp16 on older
    CUDA GPUs, fp32 elsewhere (the CPU: autocast there is slower than fp32 on most CPUs). Raises ValueError for an
    unknown name or fp16 on the CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"{flag} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device_type != "cuda":
            return "fp32"
        if bf16_supported is None:
            bf16_supported = torch.cuda.is_bf16_supported()
        return "bf16" if bf16_supported else "fp16"
    if precision == "fp16" and device_type == "cpu":
        raise ValueError(f"{flag} fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
    return precision


def inference_autocast(precision: str, device_type: str):
    """The context encode() runs the encoder in: autocast to bf16/fp16, or nothing for fp32 (a resolved name)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)

