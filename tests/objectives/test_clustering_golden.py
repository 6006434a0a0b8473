"""ClusterNS clustering math against the golden vectors from the original code (shared/golden/clusterns.json).

Tolerances (golden README): float32 cases abs(got - exp) <= 1e-5 + 1e-4 * abs(exp); float64
abs <= 1e-9 + 1e-6 * abs(exp); indices, masks and booleans exact.
"""
from __future__ import annotations

import types

import torch

from clusterns.objectives.clusterns import clustering as C
from clusterns.objectives.base import EncodedViews
from clusterns.objectives.functional import cosine_matrix
from clusterns.objectives.clusterns.objective import ClusterNSArguments, ClusterNSObjective
from conftest import golden_case


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=torch.float64).to(dtype)


def close(got, exp, dtype="float32"):
    got = torch.as_tensor(got).double()
    exp = torch.as_tensor(exp, dtype=torch.float64)
    assert got.shape == exp.shape, (got.shape, exp.shape)
    if dtype == "float64":
        tol = 1e-9 + 1e-6 * exp.abs()
    else:
        tol = 1e-5 + 1e-4 * exp.abs()
    err = (got - exp).abs()
    assert bool((err <= tol).all()), f"max abs error {err.max().item():.3e}"


def model_args(temp=0.05, hnw=0.0):
    return types.SimpleNamespace(temp=temp, hard_negative_weight=hnw)


def make_objective(case, **overrides) -> ClusterNSObjective:
    p = case["params"]
    kw = dict(kmeans=p["K"], kmean_cosine=p.get("kmean_cosine", 0.4), kmeans_lr=p.get("kmeans_lr", 1e-3),
              kmeans_optim=p.get("kmeans_optim", "momentum"), bml_weight=p.get("bml_weight", 1e-4),
              bml_alpha=p.get("bml_alpha", 0.2), bml_beta=p.get("bml_beta", 0.5))
    kw.update(overrides)
    obj = ClusterNSObjective(model_args(p["temp"], p.get("hard_negative_weight", 0.0)), ClusterNSArguments(**kw), hidden_size=p["H"])
    return obj.train()


def views(z1, z2):
    z = torch.stack([z1, z2], dim=1)
    return EncodedViews(pooled=z, local=z, gathered=z)


def test_trigger_not_started():
    case = golden_case("clusterns", "clusterns_trigger_not_started")
    z1, z2 = t(case["inputs"]["z1"]), t(case["inputs"]["z2"])
    close(cosine_matrix(z1, z2).mean(), case["expected"]["avg_cos"])
    obj = make_objective(case)
    out = obj(views(z1, z2), {}, None)
    assert obj.started is case["expected"]["initialized_after"] is False
    close(out.loss, case["expected"]["loss"])
    assert out.logs["cluster/active"].item() == 0.0
    assert out.logs["cluster/start_step"].item() == -1.0


def test_trigger_and_init_with_first_index_from_python_random():
    case = golden_case("clusterns", "clusterns_trigger_and_init")
    exp = case["expected"]
    z1, z2 = t(case["inputs"]["z1"]), t(case["inputs"]["z2"])
    cos = cosine_matrix(z1, z2)
    close(cos, exp["cos_matrix"])
    close(cos.mean(), exp["avg_cos"])
    obj = make_objective(case)
    import random

    random.seed(case["params"]["python_random_seed"])  # the original's draw, reproduced
    out = obj(views(z1, z2), {}, None)
    assert obj.started is exp["initialized_after"] is True
    close(obj.centroids, exp["centroids"])
    # Centroids are exact copies of z1 rows, in chain order.
    assert torch.equal(obj.centroids, z1[exp["chain_indices"]])
    close(out.loss, exp["loss"])  # the trigger step is plain InfoNCE
    assert out.logs["cluster/active"].item() == 0.0
    assert out.logs["cluster/start_step"].item() == 1.0


def test_greedy_chain_forced_first_index():
    case = golden_case("clusterns", "clusterns_trigger_and_init")
    z1, z2 = t(case["inputs"]["z1"]), t(case["inputs"]["z2"])
    cents, idx = C.greedy_chain_init(z1, cosine_matrix(z1, z2), 4, case["expected"]["first_index"])
    assert idx.tolist() == case["expected"]["chain_indices"]
    close(cents, case["expected"]["centroids"])


def test_init_forced_first_index_case():
    case = golden_case("clusterns", "clusterns_init_forced_first_index")
    exp = case["expected"]
    z1, cos = t(case["inputs"]["z1"]), t(case["inputs"]["cos_matrix"])
    original = cos.clone()
    cents, idx = C.greedy_chain_init(z1, cos, case["params"]["K"], case["params"]["first_index"])
    assert idx.tolist() == exp["chain_indices"]
    close(cents, exp["centroids"])
    assert torch.equal(cos, original)  # not modified unless asked
    C.greedy_chain_init(z1, cos, case["params"]["K"], case["params"]["first_index"], inplace=True)
    close(cos, exp["cos_matrix_after_init_call"])
    # Through the objective with the injectable first index.
    obj = make_objective(case)
    obj.forced_first_index = case["params"]["first_index"]
    obj._initialise(z1, t(case["inputs"]["cos_matrix"]), 1, torch.float32)
    close(obj.centroids, exp["centroids"])


def test_update_momentum():
    case = golden_case("clusterns", "clusterns_update_momentum")
    exp = case["expected"]
    c, z1 = t(case["inputs"]["centroids"]), t(case["inputs"]["z1"])
    _, a = C.assign(z1, c)
    assert a.tolist() == exp["assignments_before_update"]
    assert C.cluster_sizes(a, 4).long().tolist() == exp["cluster_sizes_before_update"]
    s, sizes = C.cluster_statistic(z1, a, 4, "sum")
    data = torch.where((sizes > 0)[:, None], s, c)
    close(data, exp["cluster_sums"])
    new = C.momentum_update(c, z1, a, case["params"]["kmeans_lr"])
    close(new, exp["new_centroids"])
    # Through the state object.
    state = C.CentroidState(4, 16, "momentum", case["params"]["kmeans_lr"])
    state.initialise(c, 1)
    assert state.update(z1).tolist() == exp["assignments_before_update"]
    close(state.centroids, exp["new_centroids"])


def test_update_kmeans():
    case = golden_case("clusterns", "clusterns_update_kmeans")
    exp = case["expected"]
    c, z1 = t(case["inputs"]["centroids"]), t(case["inputs"]["z1"])
    _, a = C.assign(z1, c)
    assert a.tolist() == exp["assignments_before_update"]
    new = C.kmeans_update(c, z1, a)
    close(new, exp["new_centroids"])
    assert torch.equal(new[2], c[2])  # the empty cluster is bit-identical


def test_hardneg_and_fn_mask():
    case = golden_case("clusterns", "clusterns_after_update_hardneg_and_fn_mask")
    exp = case["expected"]
    c, z1 = t(case["inputs"]["centroids"]), t(case["inputs"]["z1"])
    cos_xc, a = C.assign(z1, c)
    close(cos_xc, exp["cos_to_centroids"])
    assert a.tolist() == exp["assignments"]
    n2 = C.second_nearest(cos_xc)
    assert n2.tolist() == exp["second_nearest_centroid"]
    hard = c[n2]
    close(hard, exp["hard_negatives"])
    close(cosine_matrix(z1, hard) / case["params"]["temp"], exp["hardneg_logits_block"])
    m = C.false_negative_mask(a)
    assert m.long().tolist() == exp["fn_mask"]
    assert int(m.sum()) == exp["fn_pairs"]
    assert C.cluster_sizes(a, 4).long().tolist() == exp["cluster_sizes_after_update"]


def test_bml_both_reductions():
    case = golden_case("clusterns", "clusterns_bml")
    exp, p = case["expected"], case["params"]
    cos = t(case["inputs"]["cos_matrix"])
    m = torch.tensor(case["inputs"]["fn_mask"]).bool()
    delta, per_entry = C.bml_terms(cos, m, p["bml_alpha"], p["bml_beta"])
    close(delta, exp["delta"])
    close(per_entry, exp["per_entry"])
    close(C.bml_loss(cos, m, p["bml_alpha"], p["bml_beta"], "mean_all"), exp["bml_mean_all"])
    close(C.bml_loss(cos, m, p["bml_alpha"], p["bml_beta"], "mean_fn"), exp["bml_mean_fn"])
    assert int(m.sum()) == exp["fn_pairs"]


def test_total_loss_gradients_and_centroids_after_step():
    case = golden_case("clusterns", "clusterns_total_loss")
    exp = case["expected"]
    z1 = t(case["inputs"]["z1"]).requires_grad_(True)
    z2 = t(case["inputs"]["z2"]).requires_grad_(True)
    obj = make_objective(case)
    obj.cluster.initialise(t(case["inputs"]["centroids_before_step"]), 1)
    close(cosine_matrix(z1, z2).mean().detach(), exp["avg_cos"])
    out = obj(views(z1, z2), {}, None)
    close(out.loss.detach(), exp["loss"])
    out.loss.backward()
    close(z1.grad, exp["grad_z1"])
    close(z2.grad, exp["grad_z2"])
    close(obj.centroids, exp["centroids_after_step"])
    close(out.logs["bml/loss"], exp["bml_mean_all"])
    assert out.logs["cluster/active"].item() == 1.0
    # The logits the loss was computed from: [S | T].
    s = cosine_matrix(z1.detach(), z2.detach()) / 0.05
    cos_xc, _ = C.assign(z1.detach(), obj.centroids)
    hard = obj.centroids[C.second_nearest(cos_xc)]
    logits = torch.cat([s, cosine_matrix(z1.detach(), hard) / 0.05], 1)
    close(logits, exp["logits"])
    close(torch.nn.functional.cross_entropy(logits, torch.arange(8)), exp["infonce_with_hardneg"])


def test_float64_case():
    case = golden_case("clusterns", "clusterns_hardneg_fnmask_bml_float64")
    exp, p = case["expected"], case["params"]
    c, z1, z2 = (t(case["inputs"][k], torch.float64) for k in ("centroids", "z1", "z2"))
    cos = cosine_matrix(z1, z2)
    close(cos, exp["cos_matrix"], "float64")
    cos_xc = cosine_matrix(z1, c)
    a = cos_xc.argmax(1)
    assert a.tolist() == exp["assignments"]
    n2 = C.second_nearest(cos_xc)
    assert n2.tolist() == exp["second_nearest_centroid"]
    close(c[n2], exp["hard_negatives"], "float64")
    close(cosine_matrix(z1, c[n2]) / p["temp"], exp["hardneg_logits_block"], "float64")
    m = C.false_negative_mask(a)
    assert m.long().tolist() == exp["fn_mask"]
    close(C.bml_loss(cos, m, p["bml_alpha"], p["bml_beta"]), exp["bml_mean_all"], "float64")


def test_golden_two_step_chain_through_objective():
    """Step 1 (trigger, forced first index) then step 2 reproduce the total-loss case end to end."""
    init = golden_case("clusterns", "clusterns_trigger_and_init")
    total = golden_case("clusterns", "clusterns_total_loss")
    obj = make_objective(total)
    obj.forced_first_index = init["expected"]["first_index"]
    obj(views(t(init["inputs"]["z1"]), t(init["inputs"]["z2"])), {}, None)
    close(obj.centroids, total["inputs"]["centroids_before_step"])
    out = obj(views(t(total["inputs"]["z1"]), t(total["inputs"]["z2"])), {}, None)
    close(out.loss.detach(), total["expected"]["loss"])
    close(obj.centroids, total["expected"]["centroids_after_step"])
    assert out.logs["cluster/fn_pairs"].item() == 18
    assert out.logs["cluster/start_step"].item() == 1
