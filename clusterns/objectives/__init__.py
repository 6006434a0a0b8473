"""Registry: --objective NAME -> Objective class (one file per method)."""
from __future__ import annotations

import importlib

from clusterns.objectives.base import EncodedViews, Objective, ObjectiveOutput

# name -> "module:Class", imported lazily so one method's imports never slow another's start-up.
OBJECTIVES: dict[str, str] = {
    "infonce": "clusterns.objectives.infonce:InfoNCEObjective",
    "clusterns": "clusterns.objectives.clusterns.objective:ClusterNSObjective",
    "mixcse": "clusterns.objectives.mixcse:MixCSEObjective",
    "diffcse": "clusterns.objectives.diffcse.objective:DiffCSEObjective",
}


def objective_names() -> list[str]:
    return sorted(OBJECTIVES)


def get_objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ValueError(f"--objective {name!r} is not known; choose one of: {', '.join(objective_names())}")
    module_name, class_name = OBJECTIVES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def objective_argument_classes() -> list[type]:
    """The flag dataclasses of every registered objective, for HfArgumentParser."""
    classes = []
    for name in objective_names():
        cls = get_objective_class(name).arguments_class
        if cls is not None and cls not in classes:
            classes.append(cls)
    return classes


__all__ = ["EncodedViews", "Objective", "ObjectiveOutput", "OBJECTIVES", "get_objective_class", "objective_names", "objective_argument_classes"]
