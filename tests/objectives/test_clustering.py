"""Hand-checkable cases of the ClusterNS clustering functions (clusterns/clustering.py)."""
from __future__ import annotations

import math

import pytest
import torch

from clusterns.objectives.clusterns import clustering as C


def test_greedy_chain_follows_the_previous_centroid_only():
    # cos(z1_i, z2_j): from 0 the least similar is 2; from 2 (0 and 2 used) it is 1; from 1 it is 3.
    cos = torch.tensor([
        [1.0, 0.5, 0.1, 0.3],
        [0.2, 1.0, 0.4, 0.0],
        [0.9, 0.2, 1.0, 0.6],
        [0.0, 0.0, 0.0, 1.0],
    ])
    x = torch.arange(8.0).view(4, 2)
    cents, idx = C.greedy_chain_init(x, cos, 4, 0)
    assert idx.tolist() == [0, 2, 1, 3]
    assert torch.equal(cents, x[[0, 2, 1, 3]])
    # Only the last row matters: from 2 the argmin over unused {1, 3} is 1 (0.2 < 0.6), even though
    # row 0 (an earlier centroid) would prefer 3.
    cents3, idx3 = C.greedy_chain_init(x, cos, 3, 0)
    assert idx3.tolist() == [0, 2, 1]
    with pytest.raises(ValueError, match="K <= batch size"):
        C.greedy_chain_init(x, cos, 5, 0)


def test_greedy_chain_inplace_marks_used_columns():
    cos = torch.zeros(3, 3)
    cos[0, 1] = -1.0
    C.greedy_chain_init(torch.eye(3), cos, 3, 0, inplace=True)
    # first = 0, next = 1 (the -1), then column 1 is marked too; column of the last pick stays.
    assert (cos[:, 0] == 100).all() and (cos[:, 1] == 100).all() and not (cos[:, 2] == 100).any()


def test_kmeans_pp_distinct_and_deterministic():
    torch.manual_seed(0)
    x = torch.randn(20, 5)
    u = [0.1, 0.7, 0.3, 0.9, 0.5]
    c1, i1 = C.kmeans_pp_init(x, 6, 3, u)
    c2, i2 = C.kmeans_pp_init(x, 6, 3, u)
    assert i1.tolist() == i2.tolist() and i1[0].item() == 3
    assert len(set(i1.tolist())) == 6
    assert torch.equal(c1, x[i1])
    # Duplicate rows: never picks a row identical to a chosen one while others remain.
    xd = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    _, idx = C.kmeans_pp_init(xd, 2, 0, [0.0])
    assert idx.tolist() == [0, 2]


def test_assignment_by_cosine_not_distance():
    c = torch.tensor([[10.0, 0.0], [0.0, 0.1]])
    x = torch.tensor([[0.1, 1.0], [1.0, 0.2]])
    cos, a = C.assign(x, c)
    assert a.tolist() == [1, 0]  # x_0 is far from c_1 in distance but aligned with it
    assert cos.shape == (2, 2)


def test_momentum_sum_and_mean_and_empty_cluster():
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    x = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 3.0]])
    _, a = C.assign(x, c)
    assert a.tolist() == [0, 0, 1]
    new = C.momentum_update(c, x, a, 0.5, "sum")
    assert torch.allclose(new, torch.tensor([[0.5 * 6 + 0.5, 0.0], [0.0, 0.5 * 3 + 0.5], [-1.0, 0.0]]))
    new_mean = C.momentum_update(c, x, a, 0.5, "mean")
    assert torch.allclose(new_mean, torch.tensor([[0.5 * 3 + 0.5, 0.0], [0.0, 2.0], [-1.0, 0.0]]))
    assert C.cluster_sizes(a, 3).tolist() == [2.0, 1.0, 0.0]


def test_kmeans_update_resets_to_sum_or_mean():
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    x = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 3.0]])
    _, a = C.assign(x, c)
    assert torch.equal(C.kmeans_update(c, x, a, "sum"), torch.tensor([[6.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]))
    assert torch.equal(C.kmeans_update(c, x, a, "mean"), torch.tensor([[3.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]))


def test_adamw_matches_autograd_mse_and_torch_adamw():
    """grad of MSE(c[a], x) over B*H entries, then AdamW; with eps ~ 0 transformers' and torch's AdamW agree."""
    torch.manual_seed(0)
    c0 = torch.randn(4, 3)
    ref = torch.nn.Parameter(c0.clone())
    opt = torch.optim.AdamW([ref], lr=0.01, betas=(0.9, 0.999), eps=1e-12, weight_decay=0.0)
    mine = c0.clone()
    m, v, step = torch.zeros_like(mine), torch.zeros_like(mine), torch.zeros((), dtype=torch.long)
    for i in range(3):
        x = torch.randn(6, 3)
        _, a = C.assign(x, mine)
        loss = torch.nn.functional.mse_loss(ref[a], x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        C.adamw_update_(mine, x, a, m, v, step, lr=0.01, eps=1e-12)
        assert torch.allclose(mine, ref.detach(), atol=1e-6), i
    assert step.item() == 3


def test_adamw_first_step_moves_each_coordinate_by_lr():
    c = torch.tensor([[1.0, 1.0], [5.0, 5.0]])
    x = torch.tensor([[0.0, 2.0], [0.5, 0.5]])  # both join cluster 0 (cosine); cluster 1 is empty
    _, a = C.assign(x, c)
    m, v, step = torch.zeros_like(c), torch.zeros_like(c), torch.zeros((), dtype=torch.long)
    before = c.clone()
    C.adamw_update_(c, x, a, m, v, step, lr=0.1)
    # grad_0 = 2/(B*H) * (2*c_0 - x_0 - x_1) = 0.5 * [1.5, -0.5]: first Adam step ~ lr * sign(grad).
    assert torch.allclose(c[0], before[0] - 0.1 * torch.tensor([1.0, -1.0]), atol=1e-4)
    assert torch.equal(c[1], before[1])  # no gradient, no moment yet


def test_second_nearest_and_fn_mask():
    cos = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8], [0.7, 0.1, 0.6]])
    assert C.second_nearest(cos).tolist() == [1, 1, 2]
    a = torch.tensor([0, 2, 0, 1, 2])
    m = C.false_negative_mask(a)
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[0, 2] = expected[2, 0] = expected[1, 4] = expected[4, 1] = True
    assert torch.equal(m, expected)


def test_bml_by_hand():
    # Positive cosines on the diagonal; one FN pair (0, 1) in each direction.
    cos = torch.tensor([[0.9, 0.8, 0.0], [0.1, 0.7, 0.0], [0.0, 0.0, 0.5]])
    m = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    alpha, beta = 0.2, 0.5
    # delta_01 = 0.8 - 0.9 = -0.1 (> -alpha: too close) -> relu(0.1) = 0.1
    # delta_10 = 0.1 - 0.7 = -0.6 (< -beta: too far)    -> relu(0.6 - 0.5) = 0.1
    # unmasked entries: relu(alpha) = 0.2 each (7 of them)
    delta, per = C.bml_terms(cos, m, alpha, beta)
    assert torch.allclose(delta[0, 1], torch.tensor(-0.1)) and torch.allclose(delta[1, 0], torch.tensor(-0.6))
    assert math.isclose(C.bml_loss(cos, m, alpha, beta, "mean_all").item(), (0.1 + 0.1 + 7 * 0.2) / 9, rel_tol=1e-6)
    assert math.isclose(C.bml_loss(cos, m, alpha, beta, "mean_fn").item(), 0.1, rel_tol=1e-5)
    # In the band [-beta, -alpha]: no loss on the pair.
    cos2 = torch.tensor([[0.9, 0.6], [0.6, 0.9]])
    m2 = torch.tensor([[0, 1], [1, 0]], dtype=torch.bool)
    assert C.bml_loss(cos2, m2, alpha, beta, "mean_fn").item() == 0.0
    # No FN pairs: mean_fn is 0, mean_all is alpha.
    none = torch.zeros(2, 2, dtype=torch.bool)
    assert C.bml_loss(cos2, none, alpha, beta, "mean_fn").item() == 0.0
    assert math.isclose(C.bml_loss(cos2, none, alpha, beta, "mean_all").item(), alpha, rel_tol=1e-6)
    with pytest.raises(ValueError):
        C.bml_loss(cos2, none, alpha, beta, "sum")


def test_bml_gradient_reaches_the_positive():
    cos = torch.tensor([[0.9, 0.8], [0.1, 0.7]], requires_grad=True)
    m = torch.tensor([[0, 1], [1, 0]], dtype=torch.bool)
    C.bml_loss(cos, m, 0.2, 0.5, "mean_fn").backward()
    # pair (0,1) too close: push cos01 down, pull cos00 up; pair (1,0) too far: pull cos10 up, push cos11 down.
    assert cos.grad[0, 1] > 0 and cos.grad[0, 0] < 0 and cos.grad[1, 0] < 0 and cos.grad[1, 1] > 0


def test_centroid_state_buffers_roundtrip():
    s = C.CentroidState(3, 2, "adamw", 0.1)
    keys = set(s.state_dict())
    assert keys == {"centroids", "started", "start_step", "num_forwards", "adam_exp_avg", "adam_exp_avg_sq", "adam_step"}
    assert not list(s.parameters())
    s.count_forward()
    s.initialise(torch.eye(3, 2), step=1)
    s.update(torch.tensor([[1.0, 0.1], [0.1, 1.0]]))
    t = C.CentroidState(3, 2, "adamw", 0.1)
    assert not t.is_started
    t.load_state_dict(s.state_dict())
    assert t.is_started and t.forwards == 1 and int(t.start_step) == 1
    for k, v in s.state_dict().items():
        assert torch.equal(v, t.state_dict()[k]), k
    assert t.count_forward() == 2


def test_centroid_state_rejects_bad_config():
    with pytest.raises(ValueError, match="K must be > 0"):
        C.CentroidState(0, 4)
    with pytest.raises(ValueError, match="--kmeans_optim"):
        C.CentroidState(2, 4, "sgd")
    with pytest.raises(ValueError, match="--centroid_stat"):
        C.CentroidState(2, 4, stat="median")


def test_round_to_half():
    t = torch.tensor([1.0 + 2**-13])
    C.round_to_dtype_(t, torch.float16)
    assert t.item() == 1.0
