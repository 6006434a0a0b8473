"""The objective registry: --objective NAME -> Objective class (one file per method).

Adding an objective is one file (a subclass of objectives.base.Objective) and one line in OBJECTIVES,
or `register_objective(MyObjective)` from outside the package. Entries are "module:Class" strings,
imported when used, so one method's imports never slow another's start-up.
"""
from __future__ import annotations

import dataclasses
import importlib

from clusterns.objectives.base import EncodedViews, Objective, ObjectiveOutput

OBJECTIVES: dict[str, str | type[Objective]] = {
    "infonce": "clusterns.objectives.infonce:InfoNCEObjective",
    "clusterns": "clusterns.objectives.clusterns.objective:ClusterNSObjective",
    "mixcse": "clusterns.objectives.mixcse:MixCSEObjective",
    "diffcse": "clusterns.objectives.diffcse.objective:DiffCSEObjective",
}


def register_objective(objective: type[Objective] | str, name: str | None = None) -> None:
    """Add an objective: a class, or a "module:Class" string (then `name` is required)."""
    if isinstance(objective, str):
        if not name:
            raise ValueError("register_objective('module:Class') needs the name the objective is chosen by")
    else:
        if not (isinstance(objective, type) and issubclass(objective, Objective)):
            raise ValueError(f"register_objective needs an Objective subclass, got {objective!r}")
        name = name or objective.name
        if not name:
            raise ValueError(f"{objective.__name__} has no name (set the class attribute `name`)")
    if name in OBJECTIVES:
        raise ValueError(f"an objective named {name!r} is already registered ({OBJECTIVES[name]!r})")
    OBJECTIVES[name] = objective
    try:
        check_flag_collisions(objective_argument_classes())
    except ValueError:
        del OBJECTIVES[name]  # refused: the registry stays as it was
        raise


# Method names a user may type for a registered objective.
OBJECTIVE_HINTS = {"simcse": "infonce", "unsup-simcse": "infonce", "sup-simcse": "infonce", "kodiffcse": "diffcse",
                   "promptbert": "infonce or clusterns with --mask_embedding_sentence"}


def unknown_objective_message(name: str) -> str:
    hint = OBJECTIVE_HINTS.get(str(name).lower())
    known = ", ".join(objective_names())
    if hint:
        return f"--objective {name!r} is not a registered name: {name} is --objective {hint} here (the objectives: {known})"
    return f"--objective {name!r} is not known; choose one of: {known}"


def objective_names() -> list[str]:
    return sorted(OBJECTIVES)


def get_objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ValueError(unknown_objective_message(name))
    entry = OBJECTIVES[name]
    if isinstance(entry, str):
        module_name, class_name = entry.split(":")
        entry = getattr(importlib.import_module(module_name), class_name)
    return entry


def objective_argument_classes() -> list[type]:
    """The flag dataclasses of every registered objective, for HfArgumentParser."""
    classes = []
    for name in objective_names():
        cls = get_objective_class(name).arguments_class
        if cls is not None and cls not in classes:
            classes.append(cls)
    return classes


def check_flag_collisions(classes: list[type]) -> None:
    """Raise ValueError naming both owners when two flag dataclasses define the same flag (HfArgumentParser
    would otherwise fail with argparse's bare `conflicting option strings`)."""
    owners: dict[str, str] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            for flag in [f.name, *f.metadata.get("aliases", [])]:
                flag = flag.lstrip("-")
                if flag in owners and owners[flag] != cls.__name__:
                    raise ValueError(f"the flag --{flag} is defined by both {owners[flag]} and {cls.__name__}; rename one of them")
                owners[flag] = cls.__name__


def describe_objectives() -> str:
    """`--objective` help: each registered objective's name and description."""
    return "; ".join(f"{name} ({get_objective_class(name).description or name})" for name in objective_names())


__all__ = [
    "EncodedViews", "OBJECTIVES", "Objective", "ObjectiveOutput", "check_flag_collisions", "describe_objectives",
    "get_objective_class", "objective_argument_classes", "objective_names", "register_objective",
]
