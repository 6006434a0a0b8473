"""ContrastiveTrainer: a thin transformers.Trainer subclass.

What it changes: the loss comes from the objective (with its scalar logs averaged over each
logging window), evaluation is SentEval on the dev sets through `SentenceEncoder.encode`
(never through the objective), and checkpoints are encoder folders that plain
`AutoModel.from_pretrained` loads, with the objective's state beside them in safetensors.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from transformers import Trainer

from .distributed import is_distributed, world_size
from .encoder import CONFIG_NAME, PROJECTOR_WEIGHTS_NAME, WEIGHTS_NAME, MLP_KEYS, MLPProjector, _safetensors_files
from .model import ContrastiveModel

logger = logging.getLogger(__name__)

OBJECTIVE_STATE_NAME = "objective.safetensors"
TRAINING_ARGS_JSON = "training_args.json"


class NonFiniteLossError(RuntimeError):
    pass


class ContrastiveTrainer(Trainer):
    def __init__(self, *args: Any, dev_evaluator=None, run_config: dict | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.dev_evaluator = dev_evaluator
        self.run_config = run_config or {}
        self._log_sums: dict[str, torch.Tensor] = {}
        self._log_count = 0

    @property
    def contrastive_model(self) -> ContrastiveModel:
        return self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model

    # ---- loss -----------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs["loss"]
        if model.training:
            self._check_finite(loss)
            for key, value in outputs["logs"].items():
                value = value.detach().float()
                self._log_sums[key] = self._log_sums[key] + value if key in self._log_sums else value
            self._log_count += 1
            # Every rank computed the global loss but backpropagates only into its own rows; DDP
            # averages gradients over ranks, so scale to get the single-process gradient.
            loss = loss * world_size()
        return (loss, outputs) if return_outputs else loss

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss.detach()).item():
            step = self.state.global_step + 1
            message = f"non-finite loss ({loss.item()}) at step {step}"
            logger.error(message)
            if self.args.nan_policy == "stop":
                raise NonFiniteLossError(message + "; stopped (--nan_policy stop). Checkpoints written before this step are intact.")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            scale = world_size()
            logs["loss"] = logs["loss"] / scale
            if self._log_count:
                for key, total in self._log_sums.items():
                    logs[key] = round((total / self._log_count).item(), 6)
                self._log_sums, self._log_count = {}, 0
        super().log(logs, start_time)

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """SentEval dev evaluation (STS-B dev, SICK trial; transfer / KorSTS dev on request) on rank 0.

        The other ranks wait and receive the same metrics, so every rank takes the same
        best-checkpoint and early-stopping decisions."""
        if self.dev_evaluator is None:
            raise ValueError(
                "evaluation during training needs the SentEval dev data: pass --eval_data_dir pointing at the "
                "SentEval 'downstream' folder (see SentEval/data/downstream/download_dataset.sh)"
            )
        metrics: dict[str, float] | None = None
        if self.args.process_index == 0:
            encoder = self.contrastive_model.encoder
            was_training = encoder.training
            try:
                metrics = self.dev_evaluator(
                    lambda sentences: encoder.encode(sentences, batch_size=self.args.per_device_eval_batch_size)
                )
            finally:
                encoder.train(was_training)
            metrics = {k: float(v) for k, v in metrics.items()}
        if is_distributed():
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        metrics["epoch"] = self.state.epoch if self.state.epoch is not None else 0.0
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ---- checkpoints ----------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.contrastive_model
        model.encoder.save_pretrained(output_dir)
        objective_state = {k: v.detach().contiguous().cpu() for k, v in model.objective.state_dict().items()}
        if objective_state:
            save_file(objective_state, os.path.join(output_dir, OBJECTIVE_STATE_NAME), metadata={"format": "pt"})
        with open(os.path.join(output_dir, TRAINING_ARGS_JSON), "w") as f:
            json.dump({"training": self.args.to_dict(), **self.run_config}, f, indent=2, sort_keys=True, default=str)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_contrastive_state(self.contrastive_model if model is None else model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        logger.info("Loading best model from %s (score: %s).", self.state.best_model_checkpoint, self.state.best_metric)
        load_contrastive_state(self.contrastive_model, self.state.best_model_checkpoint)


def load_contrastive_state(model: ContrastiveModel, folder: str) -> None:
    """Restore encoder (backbone + projector) and objective state from a checkpoint folder written by _save."""
    files = _safetensors_files(folder)
    if not files or not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
        raise FileNotFoundError(f"{folder!r} is not a complete checkpoint (missing {WEIGHTS_NAME} or {CONFIG_NAME})")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    encoder = model.encoder
    if isinstance(encoder.projector, MLPProjector):
        encoder.projector.dense.weight.data.copy_(state.pop(MLP_KEYS[0]))
        encoder.projector.dense.bias.data.copy_(state.pop(MLP_KEYS[1]))
    else:
        for key in MLP_KEYS:
            state.pop(key, None)
    missing, unexpected = encoder.backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {folder!r} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    projector_file = os.path.join(folder, PROJECTOR_WEIGHTS_NAME)
    if os.path.isfile(projector_file):
        encoder.projector.load_state_dict(load_file(projector_file))
    objective_file = os.path.join(folder, OBJECTIVE_STATE_NAME)
    if os.path.isfile(objective_file):
        model.objective.load_state_dict(load_file(objective_file))
