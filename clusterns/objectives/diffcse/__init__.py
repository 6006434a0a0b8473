"""DiffCSE (voidism/DiffCSE) and the KoDiffCSE recipe: the objective, its conditional discriminator and
the generator's masking (collator side)."""
from clusterns.objectives.diffcse.objective import DiffCSEArguments, DiffCSEObjective

__all__ = ["DiffCSEArguments", "DiffCSEObjective"]
