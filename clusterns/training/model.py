"""ContrastiveModel: the module the Trainer trains (encoder + objective, so the optimizer sees both).

One encoder pass over the flattened views, the projector, the cross-rank gather, the objective; and the
one precision boundary (the objective in fp32_region, clusterns/precision.py)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from clusterns.training.data import SENTENCE_KEYS, TOKEN_LAYOUTS
from clusterns.training.distributed import gather_with_local_grad
from clusterns.grad_cache import cached_forward, chunk_slices, chunked_sum
from clusterns.modeling.encoder import SentenceEncoder
from clusterns.modeling.packing import keeping_token_layouts, known_token_layouts, token_layouts
from clusterns.precision import fp32_region
from clusterns.objectives.base import EncodedViews, Objective
from clusterns.objectives.functional import duplicate_negatives
from clusterns.objectives.masked_lm import MLM_INPUT_IDS, MLM_LABELS, MaskedLMLoss, selected_tokens


DDP_GRADIENTS = ("exact", "original")  # --ddp_gradient: scale_local_grad True / False


class ContrastiveModel(nn.Module):
    def __init__(self, encoder: SentenceEncoder, objective: Objective, scale_local_grad: bool = True,
                 masked_lm: MaskedLMLoss | None = None, mini_batch_size: int | None = None):
        """scale_local_grad: --ddp_gradient exact (True) or original (False: SimCSE's unscaled local gradient).
        masked_lm: SimCSE's auxiliary MLM (--do_mlm), added to the objective's loss with its weight.
        mini_batch_size: --mini_batch_size, the encoder run in chunks of that many sentences (clusterns/grad_cache.py)."""
        super().__init__()
        self.encoder = encoder
        self.objective = objective
        self.scale_local_grad = scale_local_grad
        self.masked_lm = masked_lm
        self.mini_batch_size = mini_batch_size
        # Every rank's batch has the same size (the Trainer's data loader: accelerate's even_batches): the gathers
        # need not exchange sizes first (a host sync per step).
        self.equal_rank_batches = False

    def _pooled(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None, rows: slice) -> Tensor:
        """The encoder's pooled outputs of sentences `rows`, [b, V, H]. One pass over [b*V, L]: the two identical
        copies of a sentence get different dropout masks."""
        _, num_views, length = input_ids.shape
        flat_type_ids = token_type_ids[rows].reshape(-1, length) if token_type_ids is not None else None
        pooled = self.encoder.pooled(input_ids[rows].reshape(-1, length), attention_mask[rows].reshape(-1, length),
                                     flat_type_ids, num_views=num_views)
        return pooled.view(-1, num_views, pooled.shape[-1])

    def encode_views(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> EncodedViews:
        batch_size, num_views, length = input_ids.shape
        chunked = (self.mini_batch_size is not None and self.training and torch.is_grad_enabled()
                   and batch_size > self.mini_batch_size)
        if chunked:  # --mini_batch_size: chunks without a graph, replayed in the backward pass (grad_cache.py)
            anchor = next(p for p in self.encoder.parameters() if p.requires_grad)
            pooled = cached_forward(keeping_token_layouts(lambda rows: self._pooled(input_ids, attention_mask, token_type_ids, rows)),
                                    batch_size, self.mini_batch_size, anchor)
        else:
            pooled = self._pooled(input_ids, attention_mask, token_type_ids, slice(None))
        pooled = pooled.reshape(batch_size * num_views, -1)
        projected = self.encoder.projector(pooled)  # training: the projector is always applied
        hidden = pooled.shape[-1]
        local = projected.view(batch_size, num_views, hidden)
        # Under DDP the local rows' gradient is multiplied by the world size: DDP's average of the ranks'
        # gradients is then the single-process gradient of the global batch (clusterns/training/distributed.py).
        # --ddp_gradient original leaves it unscaled, as SimCSE's gather did (1/W of that gradient).
        gathered = gather_with_local_grad(local, scale_local_grad=self.scale_local_grad, equal_sizes=self.equal_rank_batches)
        return EncodedViews(pooled=pooled.view(batch_size, num_views, hidden), local=local, gathered=gathered,
                            mini_batch_size=self.mini_batch_size if chunked else None)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None, **batch: Tensor) -> dict:
        # The collator's host-computed token positions (no nonzero() on the device); the gradient cache's replays in
        # the backward pass keep them (keeping_token_layouts).
        layouts = token_layouts(dict(batch, attention_mask=attention_mask), batch.pop(TOKEN_LAYOUTS, None))
        with known_token_layouts(layouts):
            return self._forward(input_ids, attention_mask, token_type_ids, **batch)

    def _forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None, **batch: Tensor) -> dict:
        mlm_input_ids, mlm_labels = batch.pop(MLM_INPUT_IDS, None), batch.pop(MLM_LABELS, None)
        sentence_keys = batch.pop(SENTENCE_KEYS, None)
        views = self.encode_views(input_ids, attention_mask, token_type_ids)
        if sentence_keys is not None and self.training:  # --mask_duplicates, over the global batch
            views.duplicates = duplicate_negatives(gather_with_local_grad(sentence_keys, equal_sizes=self.equal_rank_batches))
        batch = dict(batch, input_ids=input_ids, attention_mask=attention_mask)
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        if self.objective.runs_subnetworks_in_autocast:
            # Sub-networks stay in mixed precision (DiffCSE's generator and discriminator); the objective runs
            # its logits and losses in fp32_region itself.
            out = self.objective(views, batch, self.encoder)
        else:
            # The precision boundary: similarity logits, cross-entropy and clustering state in full fp32 under
            # --fp16 / --bf16 (autocast would run even fp32 matmuls in half precision) and without TF32.
            with fp32_region(input_ids.device.type):
                out = self.objective(views, batch, self.encoder)
        loss, logs = out.loss, out.logs
        if self.masked_lm is not None and self.training:
            if mlm_input_ids is None:
                raise ValueError(f"--do_mlm: the batch has no {MLM_INPUT_IDS} (the collator needs the MLMBatchMasking transform)")
            # A second backbone pass over the masked views (mixed precision as the first); the loss itself in fp32.
            if views.mini_batch_size is None:
                mlm = self.masked_lm(self.encoder.backbone, mlm_input_ids, attention_mask, mlm_labels, token_type_ids)
            else:
                mlm = self._chunked_masked_lm(views.mini_batch_size, mlm_input_ids, attention_mask, mlm_labels, token_type_ids)
            loss = loss + self.masked_lm.weight * mlm
            logs = {**logs, "mlm/loss": mlm.detach()}
        return {"loss": loss, "logs": logs}

    def _chunked_masked_lm(self, mini_batch_size: int, mlm_input_ids: Tensor, attention_mask: Tensor, labels: Tensor,
                           token_type_ids: Tensor | None) -> Tensor:
        """--do_mlm under --mini_batch_size: the second pass in chunks of sentences, each without a graph and replayed
        in the backward pass (grad_cache.chunked_sum); the chunks' summed cross-entropies over the whole batch's
        count of selected tokens, the same number as the whole-batch mean."""
        def chunk_term(rows: slice, _: None) -> tuple[Tensor, None]:
            types = token_type_ids[rows] if token_type_ids is not None else None
            return self.masked_lm(self.encoder.backbone, mlm_input_ids[rows], attention_mask[rows], labels[rows], types,
                                  reduction="sum"), None

        anchor = next(p for p in self.masked_lm.parameters() if p.requires_grad)
        total, _ = chunked_sum(keeping_token_layouts(chunk_term), chunk_slices(mlm_input_ids.shape[0], mini_batch_size), None, anchor)
        return total / selected_tokens(labels)
