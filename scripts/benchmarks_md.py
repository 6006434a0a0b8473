"""Write a benchmark script's Markdown into its own section of BENCHMARKS.md, leaving the rest as it is.

Each script owns the lines between `<!-- NAME:start -->` and `<!-- NAME:end -->`; the figures in the file are
therefore always the output of the last run of that script (`--update_md BENCHMARKS.md`), never typed by hand.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

HEADER = """# Benchmarks

Every section below is written by a benchmark script (`--update_md BENCHMARKS.md`) from its own
measurements; rerun the command shown in a section to regenerate it. Nothing here is typed by hand.
"""


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that produced a report, as a user would type it."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", script, *(shlex.quote(str(a)) for a in args)])


def short_model_name(path: str) -> str:
    """The last two parts of a model path (package/model), enough to tell which model ran."""
    return "/".join(path.rstrip("/").split("/")[-2:])


def publish(report: dict, md: str, section: str, show: bool = False, update_md: str | None = None,
            json_path: str | None = None) -> None:
    """A benchmark's outputs: print its Markdown (show), write it into `section` of update_md, the report to json_path."""
    if show:
        print()
        print(md)
    if update_md:
        update_section(update_md, section, md)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2)


def section_start(title: str, report: dict, threads: int, what: str) -> list[str]:
    """A section's first lines: its title, the command that produced it with the time, and a line naming the machine
    (machine(): CPU, cores, torch and Python versions; `threads` torch threads) followed by `what` was measured."""
    m = report["machine"]
    return [f"## {title}", "", f"`{report['command']}` ({report['measured_at']})", "",
            f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')} ({threads} threads), "
            f"Python {m.get('python', '?')}; {what}"]


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine() -> dict:
    """CPU model, cores, torch / Python versions and torch threads of this process."""
    import torch

    model_name = platform.processor() or ""
    try:
        out = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model_name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model_name, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads()}


def update_section(path: str, name: str, body: str) -> None:
    """Replace (or append) the section `name` of the Markdown file `path` with `body`, atomically."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else HEADER
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text.split(start, 1)[1]:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".benchmarks-", suffix=".md")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)  # mkstemp creates 0600
    os.replace(tmp, path)
