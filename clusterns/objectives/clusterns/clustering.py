"""ClusterNS's online clustering: pure functions on tensors plus the checkpointed centroid state.

Everything here follows the original code (djz233/ClusterNS, `simcse/models.py`, class
`kmeans_cluster`) unless a switch asks for the corrected behaviour; see
ClusterNS (Deng et al., Findings of ACL 2023, arXiv:2305.09892), djz233/ClusterNS simcse/models.py.

Conventions: x = view-1 training embeddings of the (global) batch, detached, [B, H];
c = centroids [K, H]; all clustering math is done in fp32 on cosine similarities
(centroids are not normalised, only directions matter for assignment). Nothing here
synchronises with the host except the initialisation functions, which run once.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clusterns.objectives.functional import cosine_matrix

KMEANS_OPTIMS = ("momentum", "kmeans", "adamw")
CENTROID_STATS = ("sum", "mean")
CENTROID_INITS = ("greedy_chain", "kmeans_pp")
BML_REDUCTIONS = ("mean_all", "mean_fn")

# transformers' (4.2.1) AdamW defaults, as used by the original `adamw` mode.
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# initialisation (runs once; host syncs allowed)
# ---------------------------------------------------------------------------------------------
def greedy_chain_init(x: Tensor, cos: Tensor, k: int, first_index: int, inplace: bool = False) -> tuple[Tensor, Tensor]:
    """The original `optimized_centroid_init`: a chain of K distinct batch rows.

    c_0 = x[first]; for t = 1..K-1: mark column `last` of the cross-view cosine matrix
    C = cos(z1_i, z2_j) as used (100), then next = argmin_j C[last, j]; c_t = x[next].
    Only the previous centroid's row is considered (not the whole chosen set).

    Returns (centroids [K, H] as exact copies of x rows, chain indices [K]). `cos` is left
    untouched unless `inplace` (the original writes into its argument).
    """
    b = x.shape[0]
    if not 0 < k <= b:
        raise ValueError(f"greedy-chain initialisation needs 0 < K <= batch size, got K={k}, B={b}")
    if not 0 <= first_index < b:
        raise ValueError(f"first_index {first_index} outside [0, {b})")
    c = cos if inplace else cos.clone()
    indices = torch.empty(k, dtype=torch.long, device=x.device)
    indices[0] = first_index
    last = indices[0:1]
    for t in range(1, k):
        c.index_fill_(1, last, 100.0)
        last = c.index_select(0, last).argmin(dim=1)
        indices[t : t + 1] = last
    return x.index_select(0, indices).clone(), indices


def kmeans_pp_init(x: Tensor, k: int, first_index: int, uniforms: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Corrected, set-aware initialisation: spherical k-means++ on the batch rows.

    D_j = min over chosen c of (1 - cos(x_j, c)); the next row is drawn with probability
    proportional to D_j^2 (chosen rows have D = 0). The draws use the given uniforms in
    [0, 1) (from Python `random`, identical on every rank) so the result is deterministic
    given the seed. Returns (centroids [K, H], indices [K]).
    """
    b = x.shape[0]
    if not 0 < k <= b:
        raise ValueError(f"k-means++ initialisation needs 0 < K <= batch size, got K={k}, B={b}")
    if len(uniforms) < k - 1:
        raise ValueError(f"need {k - 1} uniform draws, got {len(uniforms)}")
    xn = F.normalize(x.float(), dim=-1, eps=1e-8)
    indices = torch.empty(k, dtype=torch.long, device=x.device)
    indices[0] = first_index
    chosen = torch.zeros(b, dtype=torch.bool, device=x.device)
    chosen[first_index] = True
    dist = (1.0 - xn @ xn[first_index]).clamp_min(0.0)
    for t in range(1, k):
        weight = dist.square().masked_fill(chosen, 0.0)
        # All remaining rows identical to a chosen one: fall back to uniform over unchosen rows.
        weight = torch.where(weight.sum() > 0, weight, (~chosen).float())
        cdf = weight.cumsum(0)
        target = cdf[-1] * float(uniforms[t - 1])
        nxt = torch.searchsorted(cdf, target.reshape(1), right=True).clamp_max(b - 1)
        # Never re-pick a chosen row (possible only through rounding at a zero-weight step).
        nxt = torch.where(chosen[nxt], (~chosen).float().argmax().reshape(1), nxt)
        indices[t : t + 1] = nxt
        chosen[nxt] = True
        dist = torch.minimum(dist, (1.0 - xn @ xn[nxt].squeeze(0)).clamp_min(0.0))
    return x.index_select(0, indices).clone(), indices


def draw_first_index(batch_size: int) -> int:
    """The original's draw: Python `random.randint(0, B-1)` (HF set_seed seeds it on every rank)."""
    return random.randint(0, batch_size - 1)


# ---------------------------------------------------------------------------------------------
# per-step pure functions (no host syncs)
# ---------------------------------------------------------------------------------------------
def assign(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Spherical assignment: (cos(x_i, c_k) [B, K], a(i) = argmax_k [B])."""
    cos = cosine_matrix(x.float(), centroids.float())
    return cos, cos.argmax(dim=1)


def one_hot_members(assignments: Tensor, k: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """[K, B] membership matrix (no host sync, unlike F.one_hot / bincount on CUDA)."""
    ks = torch.arange(k, device=assignments.device)
    return (ks[:, None] == assignments[None, :]).to(dtype)


def cluster_sizes(assignments: Tensor, k: int) -> Tensor:
    """Members per cluster [K] (float)."""
    sizes = torch.zeros(k, device=assignments.device, dtype=torch.float32)
    return sizes.scatter_add_(0, assignments, torch.ones_like(assignments, dtype=torch.float32))


def cluster_statistic(x: Tensor, assignments: Tensor, k: int, stat: str = "sum") -> tuple[Tensor, Tensor]:
    """(s_k [K, H], sizes [K]): the sum (original) or mean (corrected) of each cluster's members."""
    members = one_hot_members(assignments, k, x.dtype)
    s = members @ x
    sizes = members.sum(dim=1)
    if stat == "mean":
        s = s / sizes.clamp_min(1.0)[:, None]
    elif stat != "sum":
        raise ValueError(f"centroid statistic must be one of {CENTROID_STATS}, got {stat!r}")
    return s, sizes


def momentum_update(centroids: Tensor, x: Tensor, assignments: Tensor, lr: float, stat: str = "sum") -> Tensor:
    """`momentum`: c_k <- lr * s_k + (1 - lr) * c_k for non-empty k.

    Computed exactly as the original: data = s + c * [k empty]; new = lr * data + (1 - lr) * c,
    so an empty cluster becomes lr * c + (1 - lr) * c (equal to c up to rounding)."""
    c = centroids.float()
    s, sizes = cluster_statistic(x.float(), assignments, c.shape[0], stat)
    empty = (sizes == 0).to(c.dtype)[:, None]
    data = s + c * empty
    return lr * data + (1.0 - lr) * c


def kmeans_update(centroids: Tensor, x: Tensor, assignments: Tensor, stat: str = "sum") -> Tensor:
    """`kmeans`: c_k <- s_k for non-empty k (hard reset), empty clusters unchanged (bit-identical)."""
    c = centroids.float()
    s, sizes = cluster_statistic(x.float(), assignments, c.shape[0], stat)
    return torch.where((sizes > 0)[:, None], s, c)


def adamw_update_(
    centroids: Tensor,
    x: Tensor,
    assignments: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: float,
    betas: tuple[float, float] = ADAMW_BETAS,
    eps: float = ADAMW_EPS,
    weight_decay: float = 0.0,
) -> None:
    """`adamw`: one step of transformers' (4.2.1) AdamW on MSE(c_{a(i)}, x_i) averaged over B*H.

    In place on centroids / exp_avg / exp_avg_sq / step (all buffers, so the optimiser state is
    checkpointed). grad_k = 2 / (B*H) * sum_{a(i)=k} (c_k - x_i) (Euclidean, although the
    assignment is by cosine, as in the original). Bias correction as transformers' AdamW:
    p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)."""
    b, h = x.shape
    k = centroids.shape[0]
    members = one_hot_members(assignments, k, torch.float32)
    sizes = members.sum(dim=1)
    grad = (2.0 / (b * h)) * (sizes[:, None] * centroids - members @ x.float())
    beta1, beta2 = betas
    step.add_(1)
    exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    t = step.to(torch.float32)
    step_size = lr * torch.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
    denom = exp_avg_sq.sqrt().add_(eps)
    centroids.sub_(step_size * exp_avg / denom)
    if weight_decay > 0.0:
        centroids.sub_(lr * weight_decay * centroids)


def second_nearest(cos_to_centroids: Tensor) -> Tensor:
    """n2(i): index of the 2nd-highest cos(x_i, c_k) (the nearest centroid other than one's own)."""
    return cos_to_centroids.topk(2, dim=1).indices[:, 1]


def false_negative_mask(assignments: Tensor) -> Tensor:
    """M_ij = [a(i) == a(j)] and i != j (bool, [B, B])."""
    same = assignments[:, None] == assignments[None, :]
    return same & ~torch.eye(assignments.shape[0], dtype=torch.bool, device=assignments.device)


def bml_terms(cos: Tensor, fn_mask: Tensor, alpha: float, beta: float) -> tuple[Tensor, Tensor]:
    """(delta, per-entry loss): delta_ij = (c_ij - c_ii) * M_ij; l_ij = relu(delta + alpha) + relu(-delta - beta)."""
    mask = fn_mask.to(cos.dtype)
    delta = (cos - cos.diagonal()[:, None]) * mask
    return delta, F.relu(delta + alpha) + F.relu(-delta - beta)


def bml_loss(cos: Tensor, fn_mask: Tensor, alpha: float, beta: float, reduction: str = "mean_all") -> Tensor:
    """Bidirectional Margin Loss on raw cosines cos(z1_i, z2_j).

    mean_all (original): mean over all B^2 entries (unmasked entries contribute relu(alpha));
    mean_fn (first version / corrected): mean over false-negative pairs only (0 if none)."""
    _, per_entry = bml_terms(cos, fn_mask, alpha, beta)
    if reduction == "mean_all":
        return per_entry.mean()
    if reduction == "mean_fn":
        mask = fn_mask.to(per_entry.dtype)
        return (per_entry * mask).sum() / mask.sum().clamp_min(1.0)
    raise ValueError(f"BML reduction must be one of {BML_REDUCTIONS}, got {reduction!r}")


# ---------------------------------------------------------------------------------------------
# the checkpointed state
# ---------------------------------------------------------------------------------------------
class CentroidState(nn.Module):
    """Centroids and the clustering bookkeeping, all in buffers (saved and restored with the
    objective's state_dict, unlike the original which lost them).

    Buffers: `centroids` fp32 [K, H]; `started` (bool); `start_step` (1-based index of the
    training forward that initialised the clustering, -1 before); `num_forwards` (training
    forwards seen); with `adamw` also the optimiser moments and step.

    Host-side mirrors of `started` / `num_forwards` avoid a device sync per step; they are
    refreshed from the buffers after `load_state_dict`.
    """

    def __init__(self, k: int, hidden_size: int, optim: str = "momentum", lr: float = 1e-3, stat: str = "sum"):
        super().__init__()
        if k <= 0:
            raise ValueError(f"K must be > 0, got {k}")
        if optim not in KMEANS_OPTIMS:
            raise ValueError(f"--kmeans_optim must be one of {KMEANS_OPTIMS}, got {optim!r}")
        if stat not in CENTROID_STATS:
            raise ValueError(f"--centroid_stat must be one of {CENTROID_STATS}, got {stat!r}")
        self.k, self.hidden_size, self.optim, self.lr, self.stat = int(k), int(hidden_size), optim, float(lr), stat
        self.register_buffer("centroids", torch.zeros(self.k, self.hidden_size, dtype=torch.float32))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        self.register_buffer("start_step", torch.full((), -1, dtype=torch.long))
        self.register_buffer("num_forwards", torch.zeros((), dtype=torch.long))
        if optim == "adamw":
            self.register_buffer("adam_exp_avg", torch.zeros(self.k, self.hidden_size, dtype=torch.float32))
            self.register_buffer("adam_exp_avg_sq", torch.zeros(self.k, self.hidden_size, dtype=torch.float32))
            self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))
        self._started = False
        self._num_forwards = 0
        self._mirror_valid = True

    # -- mirrors --------------------------------------------------------------------------------
    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._mirror_valid = False

    def _sync_mirror(self) -> None:
        if not self._mirror_valid:
            self._started = bool(self.started.item())
            self._num_forwards = int(self.num_forwards.item())
            self._mirror_valid = True

    @property
    def is_started(self) -> bool:
        self._sync_mirror()
        return self._started

    @property
    def forwards(self) -> int:
        self._sync_mirror()
        return self._num_forwards

    def count_forward(self) -> int:
        """Count one training forward; returns its 1-based index."""
        self._sync_mirror()
        self._num_forwards += 1
        self.num_forwards.add_(1)
        return self._num_forwards

    # -- events -----------------------------------------------------------------------------------
    @torch.no_grad()
    def initialise(self, centroids: Tensor, step: int) -> None:
        if centroids.shape != self.centroids.shape:
            raise ValueError(f"centroids of shape {tuple(centroids.shape)} do not fit the state {tuple(self.centroids.shape)}")
        self.centroids.copy_(centroids.float())
        self.started.fill_(True)
        self.start_step.fill_(int(step))
        if self.optim == "adamw":  # the original builds a fresh AdamW at initialisation
            self.adam_exp_avg.zero_()
            self.adam_exp_avg_sq.zero_()
            self.adam_step.zero_()
        self._started = True

    @torch.no_grad()
    def update(self, x: Tensor) -> Tensor:
        """One update with the batch's view-1 embeddings (detached); returns the assignments used."""
        x = x.detach().float()
        _, a = assign(x, self.centroids)
        if self.optim == "momentum":
            self.centroids.copy_(momentum_update(self.centroids, x, a, self.lr, self.stat))
        elif self.optim == "kmeans":
            self.centroids.copy_(kmeans_update(self.centroids, x, a, self.stat))
        else:
            adamw_update_(self.centroids, x, a, self.adam_exp_avg, self.adam_exp_avg_sq, self.adam_step, self.lr)
        return a

    def extra_repr(self) -> str:
        return f"k={self.k}, hidden_size={self.hidden_size}, optim={self.optim}, lr={self.lr}, stat={self.stat}"


def round_to_dtype_(t: Tensor, dtype: torch.dtype) -> None:
    """Round fp32 values to `dtype` in place (the original's fp16 centroids under AMP)."""
    if dtype in (torch.float16, torch.bfloat16):
        t.copy_(t.to(dtype).float())


__all__ = [
    "KMEANS_OPTIMS", "CENTROID_STATS", "CENTROID_INITS", "BML_REDUCTIONS", "CentroidState",
    "greedy_chain_init", "kmeans_pp_init", "draw_first_index", "assign", "one_hot_members", "cluster_sizes",
    "cluster_statistic", "momentum_update", "kmeans_update", "adamw_update_", "second_nearest",
    "false_negative_mask", "bml_terms", "bml_loss", "round_to_dtype_",
]
