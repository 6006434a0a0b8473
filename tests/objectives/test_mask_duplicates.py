"""--mask_duplicates: identical sentences of the global batch are not each other's negatives (hand-made batches)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clusterns.objectives.base import EncodedViews
from clusterns.objectives.functional import duplicate_negatives, infonce_logits, infonce_loss
from clusterns.objectives.infonce import InfoNCEObjective
from clusterns.training.arguments import ModelArguments
from clusterns.training.data import SENTENCE_KEYS, ContrastiveCollator


def test_unsupervised_duplicates_by_hand():
    keys = torch.tensor([[1, 1], [2, 2], [1, 1], [3, 3]])  # sentence 1 twice (rows 0 and 2)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, 2] = expected[2, 0] = True
    assert torch.equal(duplicate_negatives(keys), expected)


def test_supervised_repeated_premise_and_hard_negative_by_hand():
    p, q, h1, h2, h3, c1, c2 = range(10, 17)
    keys = torch.tensor([[p, h1, c1], [p, h2, c2], [q, h3, p]])  # rows 0, 1 share the premise; row 2's hard negative is p
    got = duplicate_negatives(keys)
    positives, hard = got[:, :3], got[:, 3:]
    assert torch.equal(positives, torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool))
    assert torch.equal(hard, torch.tensor([[0, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool))
    assert not got[torch.arange(3), torch.arange(3)].any()  # a row's target column is never excluded


def test_masked_loss_equals_the_loss_without_those_columns():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, dtype=torch.float64)  # 3 positives + 2 extra columns (e.g. mixed negatives)
    exclude = torch.tensor([[0, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    by_hand = []
    for i in range(3):
        keep = [j for j in range(5) if j >= 3 or not exclude[i, j]]
        row = logits[i, keep]
        by_hand.append(-(logits[i, i] - torch.logsumexp(row, 0)))
    assert torch.allclose(infonce_loss(logits, exclude), torch.stack(by_hand).mean())
    assert torch.allclose(infonce_loss(logits, torch.zeros_like(exclude)), F.cross_entropy(logits, torch.arange(3)))


def test_two_orthogonal_pairs_and_a_duplicate_by_hand():
    # z: rows 0 and 2 are the same sentence (same embedding); masked, row 0's only negative is row 1 (cos 0).
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    z = torch.stack([torch.stack([e0, e0]), torch.stack([e1, e1]), torch.stack([e0, e0])]).double()
    keys = torch.tensor([[7, 7], [8, 8], [7, 7]])
    objective = InfoNCEObjective(ModelArguments(temp=1.0))
    plain = objective(EncodedViews(z, z, z), {}, None).loss
    masked = objective(EncodedViews(z, z, z, duplicates=duplicate_negatives(keys)), {}, None).loss
    # masked: rows 0 and 2 keep their positive (cos 1) and row 1 (cos 0); row 1 keeps both copies (cos 0)
    exp_masked = (2 * math.log((math.e + 1) / math.e) + math.log((math.e + 2) / math.e)) / 3
    assert math.isclose(masked.item(), exp_masked, rel_tol=1e-12)
    # unmasked: rows 0 and 2 also see the other copy at cos 1
    exp_plain = (2 * math.log((2 * math.e + 1) / math.e) + math.log((math.e + 2) / math.e)) / 3
    assert math.isclose(plain.item(), exp_plain, rel_tol=1e-12)


def test_collator_keys_identical_token_ids_alike():
    collate = ContrastiveCollator(pad_token_id=0, num_views=2, sentence_keys=True)
    batch = collate([{"sent0_ids": [101, 5, 6, 102]}, {"sent0_ids": [101, 7, 102]}, {"sent0_ids": [101, 5, 6, 102]}])
    keys = batch[SENTENCE_KEYS]
    assert keys.shape == (3, 2) and keys.dtype == torch.long
    assert keys[0, 0] == keys[0, 1] == keys[2, 0] and keys[1, 0] != keys[0, 0]
    assert SENTENCE_KEYS not in ContrastiveCollator(pad_token_id=0)([{"sent0_ids": [1, 2]}, {"sent0_ids": [3]}])


@pytest.mark.parametrize("views", [2, 3])
def test_masking_changes_only_rows_with_duplicates(views):
    torch.manual_seed(1)
    z = torch.randn(4, views, 8, dtype=torch.float64)
    keys = torch.arange(4 * views).view(4, views)
    keys[3, 0] = keys[3, 1] = keys[0, 0]  # row 3 repeats row 0's anchor
    logits = infonce_logits(z[:, 0], z[:, 1], 0.05, z[:, 2] if views > 2 else None)
    per_row = F.cross_entropy(logits, torch.arange(4), reduction="none")
    exclude = F.pad(duplicate_negatives(keys), (0, logits.shape[1] - duplicate_negatives(keys).shape[1]))
    masked_rows = F.cross_entropy(logits.masked_fill(exclude, float("-inf")), torch.arange(4), reduction="none")
    assert torch.equal(per_row[1:3], masked_rows[1:3]) and (masked_rows[[0, 3]] < per_row[[0, 3]]).all()
