"""DiffCSE's conditional discriminator without patching transformers.

The original patched ``BertModel.forward``/``RobertaModel.forward`` (bundled transformers 4.2.1) with a
``cls_input`` argument: right after ``self.embeddings(...)`` (word + position + token-type embeddings,
LayerNorm, dropout) the position-0 row is *replaced* by the sentence vector, which therefore gets no
position embedding, no LayerNorm and no dropout. We reproduce that with a forward hook on the backbone's
``embeddings`` module that post-processes its output; the HF modeling code is used as installed.
(``inputs_embeds`` would not do: HF would add position embeddings and LayerNorm to it.)
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from clusterns.modeling.backbones import conditioning_module, pooling_layer_kwargs, ready_padding_mask
from clusterns.modeling.packing import is_packed


def splice_cls_input(embedding_output: Tensor, cls_input: Tensor) -> Tensor:
    """Replace row 0 along the sequence axis: [N, L, H], [N, H] -> [N, L, H]. Differentiable in both."""
    if cls_input.shape != (embedding_output.shape[0], embedding_output.shape[2]):
        raise ValueError(
            f"cls_input has shape {tuple(cls_input.shape)}, expected {(embedding_output.shape[0], embedding_output.shape[2])} "
            "(one sentence vector per discriminator row, of the discriminator's hidden size)"
        )
    return torch.cat([cls_input.to(embedding_output.dtype).unsqueeze(1), embedding_output[:, 1:]], dim=1)


class ConditionalDiscriminator(nn.Module):
    """A separate copy of the encoder's backbone whose position-0 embedding output is the given sentence vector.

    ``backbone`` is any HF encoder with an ``embeddings`` submodule (backbones.conditioning_module: the
    output that feeds the transformer layers, after ELECTRA's / ALBERT's projection to the hidden size).
    Its state_dict keys are the backbone's own (``backbone.*``)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        splice_at = conditioning_module(backbone)  # `embeddings`, or ELECTRA's / ALBERT's projection to the hidden size
        self.backbone = backbone
        self.hidden_size = int(backbone.config.hidden_size)
        self._cls_input: Tensor | None = None
        splice_at.register_forward_hook(self._splice_hook)

    @classmethod
    def from_encoder_backbone(cls, encoder_backbone: nn.Module) -> "ConditionalDiscriminator":
        """A fresh model of the encoder backbone's class and config, holding a copy of its current weights.

        Called at construction, before training, so the copy is the encoder's pretrained initialisation
        (DiffCSE's train.py loads the same checkpoint into ``aux_bert``). No pooler (add_pooling_layer=False)."""
        config = encoder_backbone.config
        backbone = type(encoder_backbone)(config, **pooling_layer_kwargs(config, False))
        missing, unexpected = backbone.load_state_dict(encoder_backbone.state_dict(), strict=False)
        unexpected = [k for k in unexpected if not k.startswith("pooler.")]
        if unexpected or missing:
            raise RuntimeError(f"copying the encoder into the discriminator failed: missing={missing} unexpected={unexpected}")
        ref = next(encoder_backbone.parameters())
        backbone.to(device=ref.device, dtype=ref.dtype)
        backbone.train(encoder_backbone.training)
        return cls(backbone)

    def _splice_hook(self, module: nn.Module, args, output):
        if self._cls_input is None:
            return output
        return splice_cls_input(output, self._cls_input)

    @contextlib.contextmanager
    def conditioned_on(self, cls_input: Tensor):
        self._cls_input = cls_input
        try:
            yield
        finally:
            self._cls_input = None

    def forward(self, input_ids: Tensor, attention_mask: Tensor, cls_input: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Last hidden states [N, L, H] of the discriminator on ``input_ids`` with row 0 := ``cls_input``."""
        # A padded discriminator (the original RTD loss counts pad positions) gets its mask ready-made (transformers'
        # builder would ask the device whether it is all ones: a host sync); a packed one reads the 2-D mask itself.
        ready = attention_mask if is_packed(self.backbone) else ready_padding_mask(self.backbone, attention_mask)
        kwargs = {"attention_mask": ready}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        with self.conditioned_on(cls_input):
            out = self.backbone(input_ids=input_ids, **kwargs)
        return out.last_hidden_state
