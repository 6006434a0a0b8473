"""The Objective interface: every hook an objective may implement, declared here with its default.

An objective receives the pooled views of a batch (already projected and, under DDP, gathered across
ranks) and the raw batch, and returns the loss with a dict of scalar logs. It owns its trainable parts
and its non-parameter state, so the Trainer's optimizer and checkpointing see them. Adding one is one
file (a subclass of Objective, its flags as a dataclass beside it) and one line in the registry
(objectives/__init__.py), or `register_objective(MyObjective)` from outside the package.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from torch import Tensor, nn


@dataclass
class EncodedViews:
    """What the encoder produced for one batch.

    pooled:     [B_local, V, H] pooler output before the projector (local rows, with grad).
    local:      [B_local, V, H] the training embeddings (after the projector), local rows.
    gathered:   [B_global, V, H] `local` all-gathered across ranks; this rank's rows keep their
                gradient (the SimCSE trick). Equal to `local` on a single process.
    mini_batch_size: the chunk size (sentences) the encoder ran in under --mini_batch_size, None when it ran
                on the whole batch. An objective that runs its own sub-network on the batch's rows runs it in
                chunks of this size (clusterns/grad_cache.py chunked_sum), so that it keeps the memory saving.
    """

    pooled: Tensor
    local: Tensor
    gathered: Tensor
    mini_batch_size: int | None = None
    # --mask_duplicates: [B_global, B_global*(V-1)] bool, True where a column of infonce_logits' [positives | hard
    # negatives] is a duplicate of the row's own sentences (functional.duplicate_negatives); pass it to
    # infonce_loss(logits, exclude=...). None: every in-batch sentence is a negative (the originals).
    duplicates: Tensor | None = None


@dataclass
class ObjectiveOutput:
    loss: Tensor
    # Scalar tensors (detached), logged as `<key>` averaged over the logging window.
    logs: dict[str, Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class of every training objective."""

    # ---- what the objective is (registry, --help, model card) --------------------------------------
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # one line, e.g. "SimCSE (InfoNCE with dropout views)"
    citation: ClassVar[str] = ""  # the paper and the upstream repository
    # The dataclass holding this objective's own flags (None: only the shared --temp/--hard_negative_weight).
    arguments_class: ClassVar[type | None] = None

    # ---- what it needs from the run ---------------------------------------------------------------
    # The smallest global batch the loss is defined for (checked against every batch at start-up): a contrastive
    # loss over one sentence has no negative and is exactly 0.
    min_global_batch_size: ClassVar[int] = 2
    # False: the whole forward runs in the fp32 region of training/model.py (autocast and TF32 off).
    # True: it runs under the trainer's autocast, because it runs sub-networks that should stay in mixed
    # precision (DiffCSE's generator and discriminator), and wraps its own losses in precision.fp32_region.
    runs_subnetworks_in_autocast: ClassVar[bool] = False
    # --do_mlm's default for --mlm_clone_inputs (objectives/masked_lm.py): True, SimCSE masks a copy of the views;
    # False for the forks that dropped the copy (ClusterNS, MixCSE), whose contrastive views were masked too.
    mlm_clones_inputs: ClassVar[bool] = True

    @classmethod
    def check_data_arguments(cls, data_args: Any, objective_args: Any) -> None:
        """Raise ValueError for data flags the objective cannot honour (e.g. DiffCSE and --pad_to_max_length)."""

    @classmethod
    def uses_hard_negative_weight_without_data(cls, objective_args: Any) -> bool:
        """True if --hard_negative_weight applies to negatives the objective makes itself (ClusterNS's centroids,
        MixCSE's mixtures); False: only to a hard-negative column of the data, so 1-column data refuses it."""
        return False

    @classmethod
    def required_projector(cls, objective_args: Any) -> tuple[str, str] | None:
        """(projector, the flag that asks for it) the encoder must have, or None (the --projector rule)."""
        return None

    # ---- construction and the step ------------------------------------------------------------------
    def __init__(self, model_args: Any, objective_args: Any = None, encoder: nn.Module | None = None):
        """model_args: read for the shared contrastive flags only (--temp, --hard_negative_weight)."""
        super().__init__()
        self.objective_args = objective_args
        self.temp = float(model_args.temp)
        self.hard_negative_weight = float(getattr(model_args, "hard_negative_weight", 0.0) or 0.0)

    def set_accumulation_position(self, closes_optimizer_step: bool) -> None:
        """Told by the trainer before each training forward whether this micro-batch is the last of its
        optimizer step (gradient accumulation; always True without it). State updated once per optimizer
        step (ClusterNS's --centroid_update_per optimizer_step) reads it; the default ignores it."""

    def padding_invariant(self) -> bool:
        """Whether the loss is the same whatever the number of pad positions in the batch (the collator then may pad the
        length to a multiple of 8 on CUDA). False for a loss that averages over pad positions too."""
        return True

    def batch_transform(self, tokenizer) -> Callable[[dict], dict] | None:
        """A picklable function the collator applies to each padded batch (e.g. MLM masking)."""
        return None

    def forward(self, views: EncodedViews, batch: dict[str, Tensor], encoder: nn.Module) -> ObjectiveOutput:
        raise NotImplementedError

    # Non-parameter state (e.g. ClusterNS centroids) goes through state_dict via buffers or
    # get_extra_state/set_extra_state, so resumed runs continue exactly.
