"""CONTRIBUTING, shown: a new objective is one class and one registry line, a new pooler one registry entry,
both from outside the package (this file), trained, saved, reloaded and exported without editing clusterns."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

import clusterns
from clusterns import ObjectiveOutput, SentenceEncoder
from clusterns.cli.train import train_main
from clusterns.modeling import poolers
from clusterns.modeling.pooling import Pooler, masked_mean
from clusterns.objectives import OBJECTIVES, check_flag_collisions
from clusterns.objectives.functional import infonce_logits, infonce_loss


@dataclass
class ToyArguments:
    toy_margin: float = field(default=0.25, metadata={"help": "Toy: a margin subtracted from the positive logit."})


class ToyObjective(clusterns.Objective):
    """InfoNCE with an additive margin on the positive: a method a researcher might add."""

    name = "toy_margin"
    description = "Toy (InfoNCE with an additive margin)"
    citation = "tests/test_extending.py"
    arguments_class = ToyArguments

    def forward(self, views, batch, encoder):
        z = views.gathered
        logits = infonce_logits(z[:, 0], z[:, 1], self.temp)
        margin = self.objective_args.toy_margin / self.temp
        logits = logits - margin * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype)
        return ObjectiveOutput(infonce_loss(logits), {"toy/margin": logits.new_tensor(self.objective_args.toy_margin)})


class MaxPooler(Pooler):
    """Max over the real tokens of the last layer; no built-in sentence-transformers layout, so `custom`."""

    name = "toy_max"
    description = "max over real tokens"
    st_layout = "custom"

    def pool(self, attention_mask, last_hidden_state, hidden_states, first_layer_index):
        masked = last_hidden_state.masked_fill(~attention_mask.bool().unsqueeze(-1), float("-inf"))
        return masked.max(dim=1).values


@pytest.fixture
def registered():
    clusterns.register_objective(ToyObjective)  # the one registry line
    clusterns.register_pooler(MaxPooler())  # the one registry entry
    yield
    OBJECTIVES.pop(ToyObjective.name)
    poolers.POOLERS.pop(MaxPooler.name)


def test_toy_objective_and_pooler_train_save_reload_and_export(registered, tiny_bert, tiny_corpus, tiny_sts_dir, tmp_path):
    out = tmp_path / "toy"
    train_main([str(a) for a in (
        "--model_name_or_path", tiny_bert, "--train_file", tiny_corpus, "--output_dir", out, "--objective", "toy_margin",
        "--toy_margin", 0.5, "--pooler_type", "toy_max", "--per_device_train_batch_size", 8, "--max_steps", 3,
        "--logging_steps", 1, "--use_cpu", "--report_to", "none", "--eval_strategy", "steps", "--eval_steps", 3,
        "--eval_data_dir", tiny_sts_dir, "--disable_tqdm", "true", "--seed", 1)])
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [e for e in state["log_history"] if "loss" in e]
    assert logged and all(e["toy/margin"] == 0.5 for e in logged)  # the objective's logs reached the Trainer
    assert any("eval_stsb_spearman" in e for e in state["log_history"])
    assert json.loads((out / "training_args.json").read_text())["objective_args"] == {"toy_margin": 0.5}

    encoder = SentenceEncoder.from_pretrained(out)
    assert encoder.config.pooler_type == "toy_max" and isinstance(encoder.pooling, MaxPooler)
    assert encoder.config.eval_pooler == "toy_max"
    # encode() applies the registered pooler: the max over real tokens of the backbone's last layer
    features = encoder.tokenizer(["a dog runs", "the cat"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.backbone(**features).last_hidden_state
    expected = hidden.masked_fill(~features["attention_mask"].bool().unsqueeze(-1), float("-inf")).max(1).values
    assert np.allclose(encoder.encode(["a dog runs", "the cat"]), expected.numpy(), atol=1e-5)
    assert not np.allclose(encoder.encode(["a dog runs"]), masked_mean(hidden, features["attention_mask"])[:1].numpy(), atol=1e-3)
    # the export follows the pooler's declared layout (custom), never a silent mean pooling
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["clusterns.st_modules.ClusternsEncoder"]
    card = (out / "README.md").read_text()
    assert "Toy (InfoNCE with an additive margin)" in card and "tests/test_extending.py" in card


def test_a_pooler_with_an_unknown_export_layout_is_refused():
    class Odd(MaxPooler):
        name = "toy_odd"
        st_layout = "median"

    with pytest.raises(ValueError, match="st_layout 'median' is not one of"):
        clusterns.register_pooler(Odd())
    assert "toy_odd" not in poolers.POOLERS


def test_a_flag_defined_twice_names_both_owners():
    @dataclass
    class Clash:
        toy_margin: float = 0.0

    with pytest.raises(ValueError, match="--toy_margin is defined by both ToyArguments and Clash"):
        check_flag_collisions([ToyArguments, Clash])
    with pytest.raises(ValueError, match="--temp is defined by both ModelArguments and"):
        from clusterns.training.arguments import ModelArguments

        @dataclass
        class TempAgain:
            temp: float = 1.0

        check_flag_collisions([ModelArguments, TempAgain])


def test_registering_an_objective_whose_flag_collides_is_refused():
    @dataclass
    class Colliding:
        kmeans: int = 3  # ClusterNS's flag

    class Other(ToyObjective):
        name = "toy_colliding"
        arguments_class = Colliding

    with pytest.raises(ValueError, match="--kmeans is defined by both"):
        clusterns.register_objective(Other)
    assert "toy_colliding" not in OBJECTIVES
