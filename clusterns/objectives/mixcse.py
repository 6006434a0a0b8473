"""MixCSE: InfoNCE widened with detached mixed hard negatives (BDBC-KG-NLP/MixCSE_AAAI2022).

Faithful by default (BDBC-KG-NLP/MixCSE_AAAI2022 mixcse/models_mix.py; Zhang et al., AAAI 2022): every anchor's softmax row holds 3B
columns ``[A | C | D]``

    A_ij = cos(u_i, v_j) / t                        the SimCSE block
    C_ij = cos(u_i, m_j) / t,  m_j = sg(lam v_j + (1-lam) v_{j+1})     mixed view-2 negatives
    D_ij = cos(n_i, v_j) / t,  n_i = sg(lam u_i + (1-lam) u_{i+1})     mixed view-1 anchors vs positives

with C[i, i-1] and D[i, i+1] (the mixtures that are mostly anchor i's own positive) *multiplied by 0*
as in the original (value 0.0, so exp(0) = 1 stays in every denominator; ``--mask_fill neginf``
removes them instead), and ``--hard_negative_weight`` added to each anchor's own mixture C[i, i] and
D[i, i]. Indices are modulo the **global** batch (the rows gathered across DDP ranks).

The mixed-negative columns are a building block: :func:`mixed_negative_blocks` depends on no
objective class, so any InfoNCE-style objective (e.g. ClusterNS under ``--mix_negatives``) appends
them to its own logits::

    logits = torch.cat([own_logits, *mixed_negative_blocks(z1, z2, lambdas, temp, ...)], dim=1)
    loss = infonce_loss(logits)          # labels arange(B): the positive stays in column i
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from clusterns.objectives.base import EncodedViews, Objective, ObjectiveOutput
from clusterns.objectives.functional import (
    add_to_diagonal,
    at_least_fp32,
    infonce_logits,
    infonce_loss,
    l2_normalize,
    similarity_logs,
)

MASK_FILLS = ("zero", "neginf")
MIXCSE_MODES = ("repo", "paper")

BATCH_OF_ONE_MESSAGE = (
    "MixCSE's mixed negatives (--objective mixcse, or --mix_negatives) got a global batch of 1 sentence, "
    "but mixing needs at least 2 sentences: every mixture "
    "combines a sentence's embedding with the next sentence's in the batch, and with a single sentence "
    "there is no other sentence to form negatives from. If this is the last, partial batch of an epoch "
    "(number of training sentences = 1 mod the global batch size), pass --dataloader_drop_last or choose "
    "a different --per_device_train_batch_size; otherwise use a batch size of at least 2."
)


def mix_embeddings(x: Tensor, lambdas: float | Tensor, normalize: bool = False, shift: int = 1) -> Tensor:
    """Detached mixtures of each row with the row ``shift`` places later: sg(lam x_j + (1-lam) x_{j+shift}).

    x:        [B, H] embeddings of one view over the (global) batch; indices wrap around (mod B).
    lambdas:  a float, or a tensor broadcastable to [B, 1] (per-sample lambdas; the original uses one
              constant for every sample).
    normalize: L2-normalise the rows before mixing (``--mix_normalize``; the original mixes the
              unnormalised post-projector vectors, the cosine then normalises the mixture).

    Returns [B, H] with ``requires_grad == False``: no gradient ever flows into a mixture.
    """
    x = x.detach()
    if normalize:
        x = l2_normalize(x)
    if isinstance(lambdas, Tensor):
        lambdas = lambdas.detach().to(device=x.device, dtype=x.dtype)
        if lambdas.dim() == 1:
            lambdas = lambdas.unsqueeze(1)
    nxt = torch.roll(x, shifts=-shift, dims=0)  # row j holds x_{j+shift}
    return lambdas * x + (1 - lambdas) * nxt


def mixed_mask_positions(batch_size: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Boolean [B, B] masks of the entries the original multiplies by 0.

    C: (i, i-1) - m_{i-1} = lam v_{i-1} + (1-lam) v_i is mostly anchor i's own positive.
    D: (i, i+1) - n_i = lam u_i + (1-lam) u_{i+1} is mostly u_{i+1}, whose positive is v_{i+1}.
    """
    eye = torch.eye(batch_size, dtype=torch.bool, device=device)
    return torch.roll(eye, shifts=-1, dims=1), torch.roll(eye, shifts=1, dims=1)


def _mask(block: Tensor, mask: Tensor, mask_fill: str) -> Tensor:
    # masked_fill gives the masked entries the value and a zero gradient, as the original's `mask * x`.
    return block.masked_fill(mask, 0.0 if mask_fill == "zero" else float("-inf"))


def mixed_negative_blocks(
    z1: Tensor,
    z2: Tensor,
    lambdas: float | Tensor,
    temp: float,
    hard_negative_weight: float = 0.0,
    mask_fill: str = "zero",
    mode: str = "repo",
    normalize: bool = False,
) -> list[Tensor]:
    """The extra logit columns of MixCSE, to append after an objective's own logits.

    Inputs: z1, z2 = [B, H] the two views of the **gathered** (global) batch, with their gradient
    (u = z1 the anchors, v = z2 the positives); any dtype (computed in at least fp32: float64 inputs
    stay float64; the caller's fp32 region keeps autocast off, training/model.py).
    Output: a list of fp32 logit blocks, each with B rows, to concatenate along dim 1 after the
    caller's logits (whose column i of the first block is the positive, labels arange(B)):

    - ``mode="repo"`` (original code): ``[C, D]``, two [B, B] blocks,
      C_ij = cos(u_i, m_j)/temp with m = mix_embeddings(v), C[i, i-1] masked; gradient into u only.
      D_ij = cos(n_i, v_j)/temp with n = mix_embeddings(u), D[i, i+1] masked; gradient into v only.
      ``mask_fill="zero"`` (original) sets the masked entries to 0.0 (exp(0) = 1 stays in each row's
      denominator); ``"neginf"`` sets them to -inf (removed from the softmax). hard_negative_weight is
      added at C[i, i] and D[i, i] (after masking, as the original).
    - ``mode="paper"``: one [B, 1] column, cos(u_i, m_i)/temp + hard_negative_weight: one detached
      mixed negative sg(lam v_i + (1-lam) v_{i+1}) per anchor (no masking needed).

    Raises ValueError for B < 2 (nothing to mix with).
    """
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"mixed_negative_blocks expects z1, z2 of the same shape [B, H]; got {tuple(z1.shape)} and {tuple(z2.shape)}")
    mask_fill = _parse_mask_fill(mask_fill)
    if mask_fill not in MASK_FILLS:
        raise ValueError(f"mask_fill must be one of {MASK_FILLS} (or '-inf'), got {mask_fill!r}")
    if mode not in MIXCSE_MODES:
        raise ValueError(f"mode must be one of {MIXCSE_MODES}, got {mode!r}")
    batch_size = z1.shape[0]
    if batch_size < 2:
        raise ValueError(BATCH_OF_ONE_MESSAGE)
    return _mixed_blocks(at_least_fp32(z1), at_least_fp32(z2), lambdas, temp, hard_negative_weight, mask_fill, mode, normalize)


def _mixed_blocks(u, v, lambdas, temp, hard_negative_weight, mask_fill, mode, normalize) -> list[Tensor]:
    batch_size = u.shape[0]
    m = mix_embeddings(v, lambdas, normalize=normalize)
    u_n = l2_normalize(u)
    m_n = l2_normalize(m)
    if mode == "paper":
        col = (u_n * m_n).sum(dim=-1, keepdim=True) / temp
        return [col + hard_negative_weight if hard_negative_weight else col]
    n = mix_embeddings(u, lambdas, normalize=normalize)
    v_n = l2_normalize(v)
    c_block = u_n @ m_n.transpose(0, 1) / temp
    d_block = l2_normalize(n) @ v_n.transpose(0, 1) / temp
    c_mask, d_mask = mixed_mask_positions(batch_size, device=u.device)
    c_block = add_to_diagonal(_mask(c_block, c_mask, mask_fill), hard_negative_weight)
    d_block = add_to_diagonal(_mask(d_block, d_mask, mask_fill), hard_negative_weight)
    return [c_block, d_block]


def mix_logit_logs(logits: Tensor, batch_size: int, mix_offset: int, mode: str = "repo") -> dict[str, Tensor]:
    """Mean positive / own-mixture / other logits of a widened logit matrix (detached scalars).

    logits:     [B, N] with the positive at (i, i) and the mixed blocks starting at column mix_offset.
    ``mix/pos_logit``   mean of (i, i);
    ``mix/mixed_logit`` mean of each anchor's own mixture: (i, mix_offset + i) and
                        (i, mix_offset + B + i) in repo mode, (i, mix_offset) in paper mode;
    ``mix/neg_logit``   mean of every other finite logit (the original's neg_scores: the entries
                        masked to 0 are included; -inf entries are left out).
    The original logged these from an extra no-grad forward every eval_steps; here they come from the
    training forward itself, at every step, at no extra cost.
    """
    logits = logits.detach()
    rows = torch.arange(batch_size, device=logits.device)
    pos = logits[rows, rows]
    if mode == "paper":
        own_cols = torch.full((batch_size, 1), mix_offset, device=logits.device, dtype=torch.long)
    else:
        own_cols = torch.stack([mix_offset + rows, mix_offset + batch_size + rows], dim=1)
    mixed = logits.gather(1, own_cols)
    other = torch.isfinite(logits)
    other[rows, rows] = False
    other.scatter_(1, own_cols, False)
    neg = torch.where(other, logits, torch.zeros_like(logits)).sum() / other.sum().clamp_min(1)
    return {"mix/pos_logit": pos.mean(), "mix/mixed_logit": mixed.mean(), "mix/neg_logit": neg}


def _parse_mask_fill(value: str) -> str:
    value = str(value).strip().lower()
    return {"zero": "zero", "0": "zero", "neginf": "neginf", "-inf": "neginf", "inf": "neginf"}.get(value, value)


@dataclass
class MixCSEArguments:
    """MixCSE's flags (the original train.py's ``--lambdas``, plus the faithful/corrected switches)."""

    lambdas: float = field(
        default=0.2,
        metadata={
            "help": "MixCSE mixing coefficient lam in [0, 1]: each mixed negative is lam * (an anchor's positive) + "
            "(1 - lam) * (the next sentence's embedding). The published script uses 0.2 (0.6 before 2022-06-14); "
            "the original code default 0.0 only duplicates ordinary negatives.",
            "aliases": ["--lambda"],
        },
    )
    mixcse_mode: str = field(
        default="repo",
        metadata={
            "help": "repo (original code: [A | C | D], 3B logit columns, all B mixtures are negatives for every anchor) or "
            "paper (one detached mixed negative per anchor, one extra column; unverified against the paper)."
        },
    )
    mask_fill: str = field(
        default="zero",
        metadata={
            "help": "Value of the masked mixed entries C[i,i-1], D[i,i+1]: zero (original: multiplied by 0, exp(0)=1 "
            "stays in each denominator) or neginf (corrected: removed from the softmax; '--mask_fill=-inf' also works)."
        },
    )
    mix_normalize: bool = field(
        default=False,
        metadata={"help": "L2-normalise the embeddings before mixing (original: mix the unnormalised post-projector vectors)."},
    )

    def __post_init__(self):
        if not isinstance(self.lambdas, (int, float)) or not (0.0 <= float(self.lambdas) <= 1.0):
            raise ValueError(f"--lambdas must be in [0, 1], got {self.lambdas!r}")
        self.lambdas = float(self.lambdas)
        if self.mixcse_mode not in MIXCSE_MODES:
            raise ValueError(f"--mixcse_mode must be one of {', '.join(MIXCSE_MODES)}; got {self.mixcse_mode!r}")
        fill = _parse_mask_fill(self.mask_fill)
        if fill not in MASK_FILLS:
            raise ValueError(f"--mask_fill must be zero or neginf (or -inf); got {self.mask_fill!r}")
        self.mask_fill = fill


class MixCSEObjective(Objective):
    """SimCSE InfoNCE over the gathered batch, widened with MixCSE's mixed negatives (see module doc).

    With a third view (supervised hard negatives) SimCSE's hard-negative block comes first, with
    hard_negative_weight at its own column, then the mixed blocks, as in the original.
    """

    name = "mixcse"
    description = "MixCSE (mixed hard negatives)"
    citation = ("Zhang et al. Unsupervised Sentence Representation via Contrastive Learning with Mixing Negatives. "
                "AAAI 2022. BDBC-KG-NLP/MixCSE_AAAI2022")
    arguments_class = MixCSEArguments
    mlm_clones_inputs = False  # MixCSE's mask_tokens dropped SimCSE's clone (train.py)
    # Mixing needs a next sentence: a global batch of 1 raises BATCH_OF_ONE_MESSAGE at its forward.
    min_global_batch_size = 2

    @classmethod
    def uses_hard_negative_weight_without_data(cls, objective_args) -> bool:
        return True  # added at each anchor's own mixed negative (mixed_negative_blocks)

    def __init__(self, model_args, objective_args: MixCSEArguments | None = None, encoder: nn.Module | None = None):
        super().__init__(model_args, objective_args if objective_args is not None else MixCSEArguments(), encoder)
        args = self.objective_args
        self.lambdas = args.lambdas
        self.mode = args.mixcse_mode
        self.mask_fill = args.mask_fill
        self.mix_normalize = args.mix_normalize

    def logits(self, z1: Tensor, z2: Tensor, z3: Tensor | None = None) -> Tensor:
        """The full widened logit matrix [A (| z3 block) | mixed blocks] in fp32 (labels arange(B))."""
        if z1.shape[0] < 2:
            raise ValueError(BATCH_OF_ONE_MESSAGE)
        base = infonce_logits(z1, z2, self.temp, z3, self.hard_negative_weight)
        blocks = mixed_negative_blocks(
            z1, z2, self.lambdas, self.temp, self.hard_negative_weight,
            mask_fill=self.mask_fill, mode=self.mode, normalize=self.mix_normalize,
        )
        return torch.cat([base, *blocks], dim=1)

    def forward(self, views: EncodedViews, batch: dict[str, Tensor], encoder: nn.Module) -> ObjectiveOutput:
        z = views.gathered
        batch_size = z.shape[0]
        z3 = z[:, 2] if z.shape[1] > 2 else None
        logits = self.logits(z[:, 0], z[:, 1], z3)
        loss = infonce_loss(logits, views.duplicates)  # the mixed blocks after the batch's columns stay
        mix_offset = batch_size * (2 if z3 is not None else 1)
        logs = similarity_logs(logits[:, :batch_size] * self.temp)
        logs.update(mix_logit_logs(logits, batch_size, mix_offset, self.mode))
        return ObjectiveOutput(loss=loss, logs=logs)
