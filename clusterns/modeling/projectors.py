"""Projectors applied on top of the pooled vector in training: SimCSE's MLP (fresh, or the checkpoint's pretrained
HF pooler) and DiffCSE's BatchNorm MLP."""
from __future__ import annotations

from torch import Tensor, nn

from clusterns.modeling.poolers import get_pooler


class MLPProjector(nn.Module):
    """SimCSE's MLPLayer: tanh(W h + b), randomly initialised (not the NSP-trained BERT pooler).

    Saved as `pooler.dense.*` inside the backbone's weights so that plain `AutoModel`
    returns it as `pooler_output` (what SimCSE's conversion script did)."""

    def __init__(self, hidden_size: int, initializer_range: float = 0.02):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()
        # BertPreTrainedModel._init_weights, which SimCSE's cl_init applies to its MLP.
        nn.init.normal_(self.dense.weight, mean=0.0, std=initializer_range)
        nn.init.zeros_(self.dense.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.dense(x))


class BNProjectionMLP(nn.Module):
    """DiffCSE's ProjectionMLP (--batchnorm): Linear(H,2H) - BN - ReLU - Linear(2H,H) - BN(affine=False), no biases.

    BatchNorm statistics are over all rows it is given (both views flattened, 2B rows)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, 2 * hidden_size, bias=False),
            nn.BatchNorm1d(2 * hidden_size),
            nn.ReLU(inplace=True),
            nn.Linear(2 * hidden_size, hidden_size, bias=False),
            nn.BatchNorm1d(hidden_size, affine=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# none | simcse_mlp (fresh Linear+tanh) | hf_pooler (the same layer, initialised from the checkpoint's pretrained
# HF pooler, as KoDiffCSE's contrastive vector; SentenceEncoder.from_backbone copies the weights) | bn_mlp
PROJECTOR_KINDS = ("none", "simcse_mlp", "hf_pooler", "bn_mlp")


def build_projector(kind: str, hidden_size: int, initializer_range: float = 0.02) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind in ("simcse_mlp", "hf_pooler"):
        return MLPProjector(hidden_size, initializer_range)
    if kind == "bn_mlp":
        return BNProjectionMLP(hidden_size)
    raise ValueError(f"--projector {kind!r} is not known; choose one of {', '.join(PROJECTOR_KINDS)}")


def resolve_projector(projector: str, pooler_type: str, required: str | None = None, required_by: str = "the objective") -> str:
    """`auto`: the pooler's rule (SimCSE: the MLP for cls; PromptBERT: the MLP), unless the objective
    requires a projector (DiffCSE's --batchnorm: bn_mlp), which an explicit other --projector contradicts."""
    if required is not None:
        if projector not in ("auto", required):
            raise ValueError(f"{required_by} selects the {required} projector, but --projector {projector} was given; drop one of them")
        return required
    if projector != "auto":
        return projector
    return get_pooler(pooler_type).auto_projector
