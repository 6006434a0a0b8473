"""ClusterNS (non-prompt): InfoNCE + centroid hard negatives + false-negative BML (djz233/ClusterNS).

Per training forward, over the gathered (global) batch, z1/z2 = the two views, tau = --temp
(Deng et al., Findings of ACL 2023, arXiv:2305.09892; djz233/ClusterNS simcse/models.py, train.py):

    C = cos(z1_i, z2_j)                                  B x B, fp32
    before the clustering starts: the loss is SimCSE InfoNCE; the start trigger
      (mean(C) <= --kmean_cosine, one-shot) initialises K centroids by the greedy chain
      on this batch; the trigger step itself is still plain InfoNCE.
    afterwards:
      update the centroids with x = sg(z1) (--kmeans_optim momentum | kmeans | adamw),
      re-assign a(i) = argmax_k cos(x_i, c_k), n2(i) = second-nearest centroid,
      logits = [C/tau | cos(z1_i, c_{n2(j)})/tau]  (+ hard_negative_weight at (i, B+i)),
      M_ij = [a(i) == a(j), i != j], BML on C with M,
      loss = CE(logits, arange(B)) + --bml_weight * BML.

The logits are assembled as a list of column blocks ([B, *] each) concatenated once, so other
negatives (MixCSE's mixed negatives under --mix_negatives) are just one more block.

Defaults reproduce the original code; the switches below (fn_handling ... dataset_hardneg) give the corrected behaviours.
State (centroids fp32 [K, H], started flag, start step, forward count, AdamW moments) lives in
buffers of :class:`clusterns.objectives.clusterns.clustering.CentroidState`, so it is checkpointed and restored on
resume. All ranks compute identical centroids from the identical gathered embeddings; the
initialisation is additionally broadcast from rank 0.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from clusterns.objectives.clusterns import clustering as C
from clusterns.objectives.base import EncodedViews, Objective, ObjectiveOutput
from clusterns.objectives.functional import add_to_diagonal, cosine_matrix, infonce_loss, row_cosine, similarity_logs
from clusterns.objectives.mixcse import mixed_negative_blocks

logger = logging.getLogger(__name__)

FN_HANDLINGS = ("bml_only", "mask_denominator")
HARDNEG_SCOPES = ("batch_block", "own_only")
CENTROID_DTYPES = ("fp32", "model")
CLUSTER_STARTS = ("cos_threshold", "fixed_step")
INIT_SMALL_BATCH = ("wait", "error")
DATASET_HARDNEG = ("overwrite", "keep")
CENTROID_UPDATE_PER = ("micro_batch", "optimizer_step")


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"--{flag} must be one of {', '.join(choices)}; got {value!r}")


@dataclass
class ClusterNSArguments:
    """ClusterNS's flags (names as in the original train.py) and the faithful/corrected switches."""

    kmeans: int = field(
        default=128,
        metadata={"help": "K, the number of centroids (original default 128). Must be > 0 with --objective clusterns "
                          "(the original's --kmeans 0 meant plain SimCSE: use --objective infonce)."},
    )
    kmean_cosine: float = field(
        default=0.4,
        metadata={"help": "Start threshold in [-1, 1]: clustering starts (one-shot) at the first batch whose mean "
                          "cross-view cosine over all B x B pairs is <= this value."},
    )
    kmeans_lr: float = field(
        default=1e-3,
        metadata={"help": "Centroid learning rate: EMA weight for --kmeans_optim momentum, AdamW lr for adamw, unused for kmeans."},
    )
    kmeans_optim: str = field(
        default="momentum",
        metadata={"help": "Centroid update: momentum (c <- lr*s + (1-lr)*c, original default), kmeans (c <- s), "
                          "adamw (one AdamW step on the members' MSE)."},
    )
    bml_weight: float = field(default=1e-4, metadata={"help": "lambda, the weight of the Bidirectional Margin Loss."})
    bml_alpha: float = field(default=0.2, metadata={"help": "BML inner margin alpha: cos(FN) <= cos(pos) - alpha."})
    bml_beta: float = field(default=0.5, metadata={"help": "BML outer margin beta: cos(FN) >= cos(pos) - beta."})
    enable_hardneg: bool = field(
        default=True,
        metadata={"help": "Append the centroid hard negatives once clustering has started (--no_enable_hardneg: "
                          "BML only, as the prompt variant's switch). Both --enable_hardneg and --no_enable_hardneg parse."},
    )
    kmean_debug: bool = field(
        default=False,
        metadata={"help": "Accepted for compatibility with the original command lines; the cluster statistics are "
                          "always logged (cluster/*, bml/loss, sim/*)."},
    )
    # ---- faithful (default) vs corrected switches ----
    fn_handling: str = field(
        default="bml_only",
        metadata={"help": "False negatives (same-cluster pairs): bml_only (original: kept in the InfoNCE denominator, "
                          "only regularised by BML) or mask_denominator (also removed from the softmax, -inf)."},
    )
    bml_reduction: str = field(
        default="mean_all",
        metadata={"help": "BML normalisation: mean_all (original: mean over all B^2 entries) or mean_fn (mean over the "
                          "false-negative pairs)."},
    )
    hardneg_scope: str = field(
        default="batch_block",
        metadata={"help": "Centroid hard negatives: batch_block (original: every anchor sees all B per-sample centroids, "
                          "B extra columns) or own_only (one column per anchor: its own second-nearest centroid)."},
    )
    centroid_stat: str = field(
        default="sum",
        metadata={"help": "Cluster statistic in the momentum/kmeans updates: sum (original) or mean of the members."},
    )
    centroid_dtype: str = field(
        default="fp32",
        metadata={"help": "Centroid precision: fp32 (kept in fp32 whatever the training precision) or model (rounded "
                          "to the embeddings' dtype after every update, like the original's fp16 centroids under AMP)."},
    )
    cluster_start: str = field(
        default="cos_threshold",
        metadata={"help": "Start trigger: cos_threshold (original: one-shot on --kmean_cosine) or fixed_step "
                          "(initialise at training forward --cluster_start_step)."},
    )
    cluster_start_step: int = field(
        default=1,
        metadata={"help": "With --cluster_start fixed_step: the (1-based) training forward that initialises the "
                          "centroids (plain InfoNCE on that step, clustering from the next one)."},
    )
    centroid_init: str = field(
        default="greedy_chain",
        metadata={"help": "Initialisation: greedy_chain (original: chain of the least similar sample to the previous "
                          "centroid) or kmeans_pp (spherical k-means++ over the trigger batch)."},
    )
    init_small_batch: str = field(
        default="wait",
        metadata={"help": "When the trigger batch holds fewer than K sentences: wait (skip it and check the next full "
                          "batch) or error (the original's assert, as a clear error)."},
    )
    dataset_hardneg: str = field(
        default="overwrite",
        metadata={"help": "With a dataset hard-negative column (3-column data) once clustering has started: overwrite "
                          "(original: the centroid block replaces it) or keep (both blocks). Before the start, and "
                          "with --no_enable_hardneg, the dataset hard negatives are always used."},
    )
    centroid_update_per: str = field(
        default="micro_batch",
        metadata={"help": "When the centroids move under --gradient_accumulation_steps: micro_batch (original: every "
                          "training forward) or optimizer_step (once per optimizer step, on all its micro-batches' "
                          "sentences, before the last one's assignment: the update a batch of the accumulated size "
                          "would make; earlier micro-batches use the centroids as the step began). Identical without "
                          "accumulation."},
    )
    mix_negatives: bool = field(
        default=False,
        metadata={"help": "Also append MixCSE's mixed negatives (the repo variant's two B-column blocks) to the logits."},
    )
    mix_lambdas: float = field(
        default=0.2, metadata={"help": "Mixing coefficient in [0, 1] of --mix_negatives (MixCSE's --lambdas)."}
    )

    def __post_init__(self):
        if not (isinstance(self.kmean_cosine, (int, float)) and -1.0 <= float(self.kmean_cosine) <= 1.0):
            raise ValueError(f"--kmean_cosine must be a cosine in [-1, 1], got {self.kmean_cosine!r}")
        _choice("kmeans_optim", self.kmeans_optim, C.KMEANS_OPTIMS)
        if not (math.isfinite(float(self.kmeans_lr)) and float(self.kmeans_lr) >= 0.0):
            raise ValueError(f"--kmeans_lr must be a finite number >= 0, got {self.kmeans_lr!r}")
        for name in ("bml_weight", "bml_alpha", "bml_beta"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"--{name} must be finite, got {getattr(self, name)!r}")
        _choice("fn_handling", self.fn_handling, FN_HANDLINGS)
        _choice("bml_reduction", self.bml_reduction, C.BML_REDUCTIONS)
        _choice("hardneg_scope", self.hardneg_scope, HARDNEG_SCOPES)
        _choice("centroid_stat", self.centroid_stat, C.CENTROID_STATS)
        _choice("centroid_dtype", self.centroid_dtype, CENTROID_DTYPES)
        _choice("cluster_start", self.cluster_start, CLUSTER_STARTS)
        _choice("centroid_init", self.centroid_init, C.CENTROID_INITS)
        _choice("init_small_batch", self.init_small_batch, INIT_SMALL_BATCH)
        _choice("dataset_hardneg", self.dataset_hardneg, DATASET_HARDNEG)
        _choice("centroid_update_per", self.centroid_update_per, CENTROID_UPDATE_PER)
        if self.cluster_start == "fixed_step" and self.cluster_start_step < 1:
            raise ValueError(f"--cluster_start_step must be >= 1 with --cluster_start fixed_step, got {self.cluster_start_step}")
        if not 0.0 <= float(self.mix_lambdas) <= 1.0:
            raise ValueError(f"--mix_lambdas must be in [0, 1], got {self.mix_lambdas!r}")


class ClusterNSObjective(Objective):
    name = "clusterns"
    description = "ClusterNS (clustering-aided negative sampling)"
    citation = ("Deng et al. Clustering-Aware Negative Sampling for Unsupervised Sentence Representation. "
                "Findings of ACL 2023. djz233/ClusterNS")
    arguments_class = ClusterNSArguments
    mlm_clones_inputs = False  # ClusterNS's mask_tokens dropped SimCSE's clone (models.py / train.py)

    @classmethod
    def uses_hard_negative_weight_without_data(cls, objective_args) -> bool:
        # added at each anchor's own centroid hard negative, and at its own mixed negative with --mix_negatives
        args = objective_args if objective_args is not None else ClusterNSArguments()
        return bool(args.enable_hardneg or args.mix_negatives)

    def __init__(self, model_args, objective_args: ClusterNSArguments | None = None, encoder: nn.Module | None = None,
                 hidden_size: int | None = None):
        args = objective_args if objective_args is not None else ClusterNSArguments()
        super().__init__(model_args, args, encoder)
        if args.kmeans <= 0:
            raise ValueError(
                f"--kmeans must be > 0 with --objective clusterns (got {args.kmeans}). The original's --kmeans 0 / -1 "
                "meant plain SimCSE: use --objective infonce for that."
            )
        if args.kmeans < 2:
            raise ValueError(
                f"--kmeans must be at least 2 (got {args.kmeans}): each anchor's hard negative is its second-nearest centroid"
            )
        if hidden_size is None:
            if encoder is None:
                raise ValueError("ClusterNSObjective needs the encoder (or hidden_size) to size the centroid buffer")
            hidden_size = int(getattr(encoder, "hidden_size", None) or encoder.config.hidden_size)
        self.args = args
        self.k = int(args.kmeans)
        self.cluster = C.CentroidState(self.k, hidden_size, args.kmeans_optim, args.kmeans_lr, args.centroid_stat)
        # Tests (and golden replays) force the greedy chain's first index here; None: Python random.
        self.forced_first_index: int | None = None
        self._warned_small_batch = False
        # --centroid_update_per optimizer_step: this step's view-1 embeddings so far (empty between optimizer
        # steps, hence never in a checkpoint), and whether the current micro-batch closes the step.
        self._pending: list[Tensor] = []
        self._closes_optimizer_step = True

    def set_accumulation_position(self, closes_optimizer_step: bool) -> None:
        self._closes_optimizer_step = bool(closes_optimizer_step)

    @torch.no_grad()
    def _update_centroids(self, x: Tensor, model_dtype: torch.dtype) -> None:
        """The centroid update of one training forward (active clustering), per --centroid_update_per."""
        if self.args.centroid_update_per == "optimizer_step":
            self._pending.append(x)
            if not self._closes_optimizer_step:
                return  # the step's earlier micro-batches: the centroids stay as the step began
            x = torch.cat(self._pending) if len(self._pending) > 1 else x
            self._pending = []
        self.cluster.update(x)
        if self.args.centroid_dtype == "model":
            C.round_to_dtype_(self.cluster.centroids, model_dtype)

    # ------------------------------------------------------------------------------------------
    # start trigger and initialisation (host syncs allowed: they happen only before the start)
    # ------------------------------------------------------------------------------------------
    def _should_start(self, cos: Tensor, step: int) -> bool:
        batch = cos.shape[0]
        args = self.args
        if args.cluster_start == "fixed_step":
            decision = step >= args.cluster_start_step
        else:
            decision = bool(cos.mean() <= args.kmean_cosine)  # one host sync per pre-start step
        if decision and batch < self.k:
            if args.init_small_batch == "error":
                raise ValueError(
                    f"ClusterNS initialisation needs at least --kmeans={self.k} sentences in the (global) batch, got {batch} "
                    "(the original asserts K <= B). Use --init_small_batch wait to skip such batches, a smaller --kmeans, "
                    "or a larger batch."
                )
            if not self._warned_small_batch:
                logger.warning(
                    "ClusterNS: the start condition is met on a (global) batch of %d < --kmeans=%d sentences; waiting for a "
                    "batch of at least K sentences (if every batch is smaller, clustering never starts and the run is plain "
                    "SimCSE: lower --kmeans or raise the batch size)", batch, self.k,
                )
                self._warned_small_batch = True
            decision = False
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([int(decision)], device=cos.device)
            dist.broadcast(flag, src=0)  # every rank follows rank 0's decision
            decision = bool(flag.item())
        return decision

    @torch.no_grad()
    def _initialise(self, x: Tensor, cos: Tensor, step: int, model_dtype: torch.dtype) -> None:
        batch = x.shape[0]
        first = self.forced_first_index if self.forced_first_index is not None else C.draw_first_index(batch)
        if self.args.centroid_init == "kmeans_pp":
            uniforms = [random.random() for _ in range(self.k - 1)]
            centroids, _ = C.kmeans_pp_init(x, self.k, first, uniforms)
        else:
            centroids, _ = C.greedy_chain_init(x, cos, self.k, first)
        centroids = centroids.float()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            centroids = centroids.contiguous()
            dist.broadcast(centroids, src=0)
        if self.args.centroid_dtype == "model":
            C.round_to_dtype_(centroids, model_dtype)
        self.cluster.initialise(centroids, step)
        logger.info("ClusterNS: clustering started at training forward %d (K=%d, batch %d)", step, self.k, batch)

    def _keeps_dataset_hardneg(self, hard: Tensor | None) -> bool:
        """Whether the dataset's hard-negative block is in the logits (--dataset_hardneg overwrite drops it once
        the centroid hard negatives are on)."""
        return not (hard is not None and self.args.enable_hardneg and self.args.dataset_hardneg == "overwrite")

    def logit_blocks(self, z1: Tensor, z2: Tensor, cos: Tensor, z3: Tensor | None = None, hard: Tensor | None = None,
                     fn_mask: Tensor | None = None) -> list[Tensor]:
        """The logits as a sequence of [B, *] column blocks (labels arange(B): the positive is column i of the first).

        1. S = cos(z1_i, z2_j)/tau, with false negatives set to -inf under --fn_handling mask_denominator;
        2. the dataset hard negatives cos(z1_i, z3_j)/tau (3-column data), unless the centroid block overwrites them;
        3. the centroid hard negatives (when `hard` is given and --enable_hardneg): cos(z1_i, h_j)/tau for all j
           (batch_block) or cos(z1_i, h_i)/tau (own_only);
        4. MixCSE's mixed negatives under --mix_negatives.
        hard_negative_weight is added at each anchor's own column of every hard-negative block.
        """
        args = self.args
        positives = cos / self.temp
        if fn_mask is not None and args.fn_handling == "mask_denominator":
            positives = positives.masked_fill(fn_mask, float("-inf"))
        blocks = [positives]
        if z3 is not None and self._keeps_dataset_hardneg(hard):
            blocks.append(add_to_diagonal(cosine_matrix(z1, z3) / self.temp, self.hard_negative_weight))
        if hard is not None and args.enable_hardneg:
            if args.hardneg_scope == "batch_block":
                blocks.append(add_to_diagonal(cosine_matrix(z1, hard) / self.temp, self.hard_negative_weight))
            else:
                own = row_cosine(z1, hard)[:, None] / self.temp  # one column: each anchor's own centroid
                blocks.append(own + self.hard_negative_weight if self.hard_negative_weight else own)
        if args.mix_negatives:
            blocks.extend(mixed_negative_blocks(z1, z2, args.mix_lambdas, self.temp, self.hard_negative_weight))
        return blocks

    # ------------------------------------------------------------------------------------------
    def forward(self, views: EncodedViews, batch: dict[str, Tensor], encoder: nn.Module) -> ObjectiveOutput:
        # Runs in training/model.py's fp32 region: logits, clustering and BML in full fp32.
        z = views.gathered
        model_dtype = z.dtype
        z1, z2 = z[:, 0].float(), z[:, 1].float()
        z3 = z[:, 2].float() if z.shape[1] > 2 else None
        args = self.args
        state = self.cluster

        cos = cosine_matrix(z1, z2)  # B x B raw cosines, fp32
        x = z1.detach()

        active = state.is_started
        if self.training:
            step = state.count_forward()
            if not active and self._should_start(cos.detach(), step):
                self._initialise(x, cos.detach(), step, model_dtype)
                # The trigger step stays plain InfoNCE (original: "do nothing else this step").

        zero = cos.new_zeros(())
        hard = None  # the centroid hard negatives h_i = c_{n2(i)} [B, H]
        fn_mask = None
        sizes = None
        if active:
            with torch.no_grad():
                if self.training:
                    self._update_centroids(x, model_dtype)
                cos_xc, assignments = C.assign(x, state.centroids)
                hard = state.centroids.index_select(0, C.second_nearest(cos_xc))
                fn_mask = C.false_negative_mask(assignments)
                sizes = C.cluster_sizes(assignments, self.k)

        blocks = self.logit_blocks(z1, z2, cos, z3, hard, fn_mask if active else None)
        duplicates = views.duplicates
        if duplicates is not None and z3 is not None and not self._keeps_dataset_hardneg(hard):
            duplicates = duplicates[:, : z1.shape[0]]  # the centroid block replaced the dataset's hard negatives
        logits = torch.cat(blocks, dim=1)
        loss = infonce_loss(logits, duplicates)

        bml = zero
        if active:
            bml = C.bml_loss(cos, fn_mask, args.bml_alpha, args.bml_beta, args.bml_reduction)
            loss = loss + args.bml_weight * bml

        # ---- logs (detached scalars, same keys every step) ----------------------------------------
        logs = similarity_logs(cos)
        if hard is not None:
            logs["sim/hardneg"] = row_cosine(x, hard).mean()
        elif z3 is not None:
            logs["sim/hardneg"] = row_cosine(x, z3.detach()).mean()
        else:
            logs["sim/hardneg"] = zero
        logs["cluster/active"] = zero + float(active)
        logs["cluster/start_step"] = state.start_step.to(zero.dtype)
        if sizes is not None:
            logs["cluster/size_min"] = sizes.min()
            logs["cluster/size_median"] = sizes.median()
            logs["cluster/size_max"] = sizes.max()
            logs["cluster/empty"] = (sizes == 0).sum().to(zero.dtype)
            logs["cluster/fn_pairs"] = fn_mask.sum().to(zero.dtype)
        else:
            for key in ("size_min", "size_median", "size_max", "empty", "fn_pairs"):
                logs[f"cluster/{key}"] = zero
        logs["bml/loss"] = bml.detach()
        return ObjectiveOutput(loss=loss, logs={k: v.detach() for k, v in logs.items()})

    # Convenience for tests and analysis.
    @property
    def centroids(self) -> Tensor:
        return self.cluster.centroids

    @property
    def started(self) -> bool:
        return self.cluster.is_started
