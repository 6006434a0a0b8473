"""Helpers for the recipe-script tests: run a script's --dry_run and parse what it prints."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dry_run(script: str, *args: str, env: dict | None = None) -> tuple[dict[str, str], list[list[str]]]:
    """Returns (the key=value configuration lines, the printed commands as argv lists)."""
    full_env = dict(os.environ, **(env or {}))
    out = subprocess.run(["bash", str(REPO / script), *args, "--dry_run"], capture_output=True, text=True, env=full_env, check=True).stdout
    config, commands = {}, []
    for line in out.splitlines():
        if line.startswith("  --"):
            commands[-1].extend(shlex.split(line.strip()))
        elif "=" in line and not line.startswith((" ", "python", "torchrun")):
            key, _, value = line.partition("=")
            config[key.strip()] = value.strip()
        elif line.startswith(("python", "torchrun")):
            commands.append(shlex.split(line))
    return config, commands


def flag(command: list[str], name: str) -> str | bool | None:
    """Value of --name in an argv list (True for a bare switch, None if absent)."""
    if name not in command:
        return None
    i = command.index(name)
    if i + 1 < len(command) and not command[i + 1].startswith("--"):
        return command[i + 1]
    return True


def train_argv(command: list[str]) -> list[str]:
    """The train.py flags of a printed launch command."""
    return command[command.index("train.py") + 1 :]
