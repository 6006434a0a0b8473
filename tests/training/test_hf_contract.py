"""The private transformers.Trainer methods ContrastiveTrainer relies on still have the signatures it uses."""
from __future__ import annotations

import inspect

import pytest
from transformers import Trainer

from clusterns.training.trainer import HF_PRIVATE_OVERRIDES, ContrastiveTrainer


@pytest.mark.parametrize("name", sorted(HF_PRIVATE_OVERRIDES))
def test_private_hf_method_signature(name):
    params, required = HF_PRIVATE_OVERRIDES[name]
    method = getattr(Trainer, name, None)
    if method is None:
        assert not required, f"transformers.Trainer.{name} is gone: ContrastiveTrainer overrides it"
        return
    assert tuple(inspect.signature(method).parameters)[: len(params)] == params, (
        f"transformers.Trainer.{name}{inspect.signature(method)} changed; ContrastiveTrainer relies on {params}")


def test_every_private_override_is_listed():
    """A private HF method overridden without an entry in HF_PRIVATE_OVERRIDES fails here."""
    ours = {name for name, value in vars(ContrastiveTrainer).items()
            if name.startswith("_") and not name.startswith("__") and callable(value) and hasattr(Trainer, name)}
    assert ours <= set(HF_PRIVATE_OVERRIDES), sorted(ours - set(HF_PRIVATE_OVERRIDES))
