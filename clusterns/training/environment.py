"""What produced a run: package versions, the device, the processes, the framework's commit, the command line and
the training file's hash. Recorded in training_args.json under "environment" (beside the model, in every checkpoint)
and shown by the model card, so that a number can be traced to the code and data that gave it (seed variance aside,
the first question when a result does not reproduce).

It describes the process that wrote the folder: after a resume, the resuming process."""
from __future__ import annotations

import hashlib
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("clusterns", "torch", "transformers", "datasets", "numpy", "tokenizers", "safetensors", "scipy",
            "scikit-learn", "sentence-transformers", "accelerate")
# torchrun's variables: processes in all, per node, and the number of nodes' groups
LAUNCH_VARIABLES = ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")
FRAMEWORK_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding clusterns/, when it is one


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["torch_cuda"] = torch.version.cuda
    out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    return out


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_record(device: torch.device | str) -> dict[str, Any]:
    device = torch.device(device)
    record: dict[str, Any] = {"device": str(device), "cpu": cpu_name(), "cpu_count": os.cpu_count()}
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        record.update(gpu=torch.cuda.get_device_name(index), gpu_count=torch.cuda.device_count())
    return record


def git_record(root: Path = FRAMEWORK_ROOT) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the framework's checkout (dirty: tracked files changed), None if it is not one (an
    installed package) or git is missing."""
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0 or status.returncode != 0:
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def environment_record(argv: list[str], train_file: str | None, device: torch.device | str, world_size: int) -> dict[str, Any]:
    """The record of this process (see the module docstring)."""
    return {
        "recorded_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command_line": shlex.join([os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "train.py", *argv]),
        "argv": list(argv),
        "packages": package_versions(),
        "device": device_record(device),
        "processes": int(world_size),
        "launcher": {name: os.environ[name] for name in LAUNCH_VARIABLES if name in os.environ},
        "framework_git": git_record(),
        "train_file": train_file,
        "train_file_sha256": file_sha256(train_file) if train_file and os.path.isfile(train_file) else None,
    }


__all__ = ["environment_record", "file_sha256", "git_record", "package_versions", "device_record"]
