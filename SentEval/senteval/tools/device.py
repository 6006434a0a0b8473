from __future__ import annotations

import torch


def resolve_device(device=None) -> torch.device:
    """CUDA when available unless a device is given; never asserts CUDA."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
