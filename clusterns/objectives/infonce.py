"""SimCSE: InfoNCE over the two dropout views (unsupervised) or a (sent0, sent1, hard_neg) triple (supervised)."""
from __future__ import annotations

from torch import Tensor, nn

from clusterns.objectives.base import EncodedViews, Objective, ObjectiveOutput
from clusterns.objectives.functional import infonce_logits, infonce_loss, similarity_logs


class InfoNCEObjective(Objective):
    name = "infonce"
    description = "SimCSE (InfoNCE with dropout views)"
    citation = "Gao, Yao and Chen. SimCSE: Simple Contrastive Learning of Sentence Embeddings. EMNLP 2021. princeton-nlp/SimCSE"

    def forward(self, views: EncodedViews, batch: dict[str, Tensor], encoder: nn.Module) -> ObjectiveOutput:
        z = views.gathered
        z3 = z[:, 2] if z.shape[1] > 2 else None
        logits = infonce_logits(z[:, 0], z[:, 1], self.temp, z3, self.hard_negative_weight)
        loss = infonce_loss(logits, views.duplicates)
        batch_size = z.shape[0]
        logs = similarity_logs(logits[:, :batch_size] * self.temp)
        return ObjectiveOutput(loss=loss, logs=logs)
