"""The command line read by hand, for the few decisions taken before HfArgumentParser parses it: which flags were
given at all (no method flag silently ignored), the process group of a torchrun restart (it must exist before
TrainingArguments sets up the device), and dropping --fp16 on a machine without a GPU. Names are given without
their leading dashes; boolean values are read with HF's spellings (transformers' string_to_bool)."""
from __future__ import annotations

TRUE_WORDS = ("yes", "true", "t", "y", "1")
FALSE_WORDS = ("no", "false", "f", "n", "0")


def given_flags(argv: list[str]) -> list[str]:
    """The flag names on the command line, in order (`--name value` and `--name=value`)."""
    return [arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")]


def flag_value(argv: list[str], name: str) -> str | None:
    """The value of `--name V` / `--name=V` in argv (the last one), None when absent or given without a value."""
    value = None
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def switch_given(argv: list[str], name: str) -> bool:
    """Whether a boolean flag is on: `--name`, `--name true` or `--name=true`; `false` / `0` / `no` turn it off."""
    value = flag_value(argv, name)
    if value is None or value.startswith("--") or value.lower() not in TRUE_WORDS + FALSE_WORDS:
        return f"--{name}" in argv
    return value.lower() in TRUE_WORDS


def without_flag(argv: list[str], name: str) -> list[str]:
    """argv without the boolean flag --name (also --name=value and `--name true|false`)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.split("=", 1)[0] == f"--{name}":
            following = argv[i + 1] if i + 1 < len(argv) and "=" not in arg else ""
            skip = following.lower() in TRUE_WORDS + FALSE_WORDS
            continue
        out.append(arg)
    return out


__all__ = ["FALSE_WORDS", "TRUE_WORDS", "flag_value", "given_flags", "switch_given", "without_flag"]
