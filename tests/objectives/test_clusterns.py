"""ClusterNS objective: flags, start trigger, switches, logs, state, mixed-negative hook (random tensors, no model)."""
from __future__ import annotations

import random
import types

import pytest
import torch
import torch.nn.functional as F
from transformers import HfArgumentParser

from clusterns.precision import fp32_region
from clusterns.objectives.clusterns import clustering as C
from clusterns.objectives import get_objective_class, objective_argument_classes
from clusterns.objectives.base import EncodedViews
from clusterns.objectives.functional import cosine_matrix
from clusterns.objectives.clusterns.objective import ClusterNSArguments, ClusterNSObjective

LOG_KEYS = {
    "cluster/active", "cluster/start_step", "cluster/size_min", "cluster/size_median", "cluster/size_max",
    "cluster/empty", "cluster/fn_pairs", "bml/loss", "sim/pos", "sim/neg", "sim/hardneg",
}


def margs(temp=0.05, hnw=0.0):
    return types.SimpleNamespace(temp=temp, hard_negative_weight=hnw)


def make(k=4, hidden=16, hnw=0.0, **kw):
    kw.setdefault("kmean_cosine", 1.0)  # start at once
    obj = ClusterNSObjective(margs(hnw=hnw), ClusterNSArguments(kmeans=k, **kw), hidden_size=hidden)
    obj.forced_first_index = 0
    return obj.train()


def views(z):
    return EncodedViews(pooled=z, local=z, gathered=z)


def batch(b=8, v=2, h=16, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, v, h, generator=g)
    return z.requires_grad_(requires_grad)


# ---- flags -------------------------------------------------------------------------------------
def parse(argv):
    (args,) = HfArgumentParser(ClusterNSArguments).parse_args_into_dataclasses(args=argv)
    return args


def test_defaults_are_the_original_code():
    a = ClusterNSArguments()
    assert (a.kmeans, a.kmean_cosine, a.kmeans_lr, a.kmeans_optim) == (128, 0.4, 1e-3, "momentum")
    assert (a.bml_weight, a.bml_alpha, a.bml_beta, a.enable_hardneg) == (1e-4, 0.2, 0.5, True)
    assert (a.fn_handling, a.bml_reduction, a.hardneg_scope, a.centroid_stat) == ("bml_only", "mean_all", "batch_block", "sum")
    assert (a.cluster_start, a.centroid_init, a.dataset_hardneg) == ("cos_threshold", "greedy_chain", "overwrite")
    assert a.init_small_batch == "wait"  # the issue asks for waiting instead of the original's crash


def test_flags_parse_including_both_enable_hardneg_forms():
    a = parse(["--kmeans", "96", "--kmean_cosine", "0.2", "--kmeans_lr", "5e-4", "--kmeans_optim", "kmeans",
               "--bml_weight", "1e-2", "--bml_alpha", "0", "--bml_beta", "0.3", "--enable_hardneg"])
    assert (a.kmeans, a.kmean_cosine, a.kmeans_lr, a.kmeans_optim, a.enable_hardneg) == (96, 0.2, 5e-4, "kmeans", True)
    assert (a.bml_weight, a.bml_alpha, a.bml_beta) == (1e-2, 0.0, 0.3)
    assert parse(["--no_enable_hardneg"]).enable_hardneg is False
    assert parse(["--enable_hardneg", "False"]).enable_hardneg is False
    assert parse(["--kmean_debug"]).kmean_debug is True
    b = parse(["--fn_handling", "mask_denominator", "--bml_reduction", "mean_fn", "--hardneg_scope", "own_only",
               "--centroid_stat", "mean", "--cluster_start", "fixed_step", "--cluster_start_step", "10",
               "--centroid_init", "kmeans_pp", "--init_small_batch", "error", "--dataset_hardneg", "keep",
               "--centroid_dtype", "model", "--mix_negatives", "--mix_lambdas", "0.3"])
    assert (b.fn_handling, b.bml_reduction, b.hardneg_scope, b.centroid_stat) == ("mask_denominator", "mean_fn", "own_only", "mean")
    assert (b.cluster_start, b.cluster_start_step, b.centroid_init, b.init_small_batch) == ("fixed_step", 10, "kmeans_pp", "error")
    assert (b.dataset_hardneg, b.centroid_dtype, b.mix_negatives, b.mix_lambdas) == ("keep", "model", True, 0.3)


@pytest.mark.parametrize("argv, flag", [
    (["--kmean_cosine", "1.5"], "--kmean_cosine"),
    (["--kmean_cosine", "-1.01"], "--kmean_cosine"),
    (["--kmeans_optim", "sgd"], "--kmeans_optim"),
    (["--fn_handling", "drop"], "--fn_handling"),
    (["--bml_reduction", "sum"], "--bml_reduction"),
    (["--hardneg_scope", "all"], "--hardneg_scope"),
    (["--centroid_init", "random"], "--centroid_init"),
    (["--init_small_batch", "skip"], "--init_small_batch"),
    (["--cluster_start", "fixed_step", "--cluster_start_step", "0"], "--cluster_start_step"),
    (["--kmeans_lr", "-1"], "--kmeans_lr"),
    (["--mix_lambdas", "2"], "--mix_lambdas"),
])
def test_bad_values_fail_at_parse_time_naming_the_flag(argv, flag):
    with pytest.raises(ValueError, match=flag):
        parse(argv)


@pytest.mark.parametrize("k", [0, -1])
def test_non_positive_k_points_to_infonce(k):
    with pytest.raises(ValueError, match=r"--kmeans.*--objective infonce"):
        ClusterNSObjective(margs(), ClusterNSArguments(kmeans=k), hidden_size=8)


def test_single_centroid_is_rejected():
    with pytest.raises(ValueError, match="--kmeans must be at least 2"):
        ClusterNSObjective(margs(), ClusterNSArguments(kmeans=1), hidden_size=8)


def test_batch_of_one_after_start():
    obj = make()
    obj(views(batch()), {}, None)
    out = obj(views(batch(b=1, seed=3)), {}, None)
    assert torch.isfinite(out.loss) and out.logs["cluster/fn_pairs"].item() == 0


def test_registered_and_parsed_by_train_py():
    assert get_objective_class("clusterns") is ClusterNSObjective
    assert ClusterNSArguments in objective_argument_classes()
    from clusterns.training.run import parse_args

    model_args, _, by_class, _ = parse_args([
        "--model_name_or_path", "x", "--output_dir", "/tmp/unused", "--objective", "clusterns",
        "--kmeans", "128", "--kmean_cosine", "0.4", "--enable_hardneg", "--bml_weight", "1e-4",
    ])
    assert model_args.objective == "clusterns"
    assert by_class[ClusterNSArguments].kmeans == 128 and by_class[ClusterNSArguments].enable_hardneg


# ---- trigger and state ---------------------------------------------------------------------------
def test_logs_same_keys_every_step_and_detached():
    obj = make(kmean_cosine=-1.0)  # never starts
    out = obj(views(batch(requires_grad=True)), {}, None)
    assert set(out.logs) == LOG_KEYS
    assert all(v.dim() == 0 and not v.requires_grad for v in out.logs.values())
    assert out.logs["cluster/active"].item() == 0 and out.logs["cluster/start_step"].item() == -1
    obj2 = make()
    obj2(views(batch()), {}, None)
    out2 = obj2(views(batch(seed=1, requires_grad=True)), {}, None)
    assert set(out2.logs) == LOG_KEYS
    assert all(not v.requires_grad for v in out2.logs.values())
    assert out2.logs["cluster/active"].item() == 1 and out2.logs["cluster/start_step"].item() == 1
    sizes = C.cluster_sizes(C.assign(batch(seed=1)[:, 0], obj2.centroids)[1], 4)
    assert out2.logs["cluster/size_max"].item() == sizes.max().item()
    assert out2.logs["cluster/empty"].item() == (sizes == 0).sum().item()


def test_never_started_is_exactly_simcse():
    from clusterns.objectives.infonce import InfoNCEObjective

    z = batch(requires_grad=True)
    obj = make(kmean_cosine=-1.0)
    ref = InfoNCEObjective(margs())(views(z), {}, None).loss
    assert torch.allclose(obj(views(z), {}, None).loss, ref)
    assert not obj.started


def test_trigger_step_is_plain_infonce_then_clustering():
    from clusterns.objectives.infonce import InfoNCEObjective

    obj = make()
    z = batch()
    out = obj(views(z), {}, None)
    assert obj.started
    assert torch.allclose(out.loss, InfoNCEObjective(margs())(views(z), {}, None).loss)
    assert torch.equal(obj.centroids, C.greedy_chain_init(z[:, 0], cosine_matrix(z[:, 0], z[:, 1]), 4, 0)[0])
    out2 = obj(views(batch(seed=1)), {}, None)
    assert out2.logs["cluster/active"].item() == 1


def test_small_trigger_batch_waits_or_errors():
    obj = make(k=6)
    obj(views(batch(b=4)), {}, None)  # the condition is met but B=4 < K=6
    assert not obj.started
    obj(views(batch(b=8)), {}, None)
    assert obj.started and int(obj.cluster.start_step) == 2
    with pytest.raises(ValueError, match="--kmeans=6"):
        make(k=6, init_small_batch="error")(views(batch(b=4)), {}, None)


def test_fixed_step_start():
    obj = make(kmean_cosine=-1.0, cluster_start="fixed_step", cluster_start_step=3)
    for step in (1, 2):
        obj(views(batch(seed=step)), {}, None)
        assert not obj.started
    obj(views(batch(seed=3)), {}, None)
    assert obj.started and int(obj.cluster.start_step) == 3


def test_first_index_comes_from_python_random():
    obj = make()
    obj.forced_first_index = None
    z = batch()
    random.seed(17)
    obj(views(z), {}, None)
    random.seed(17)
    first = random.randint(0, 7)
    assert torch.equal(obj.centroids[0], z[first, 0])


def test_eval_mode_does_not_change_state():
    obj = make()
    obj(views(batch()), {}, None)
    before = {k: v.clone() for k, v in obj.state_dict().items()}
    obj.eval()
    out = obj(views(batch(seed=5)), {}, None)
    assert out.logs["cluster/active"].item() == 1
    for k, v in obj.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_no_parameters_and_no_gradient_into_centroids():
    obj = make()
    assert not list(obj.parameters())
    obj(views(batch()), {}, None)
    z = batch(seed=1, requires_grad=True)
    obj(views(z), {}, None).loss.backward()
    assert z.grad is not None and not obj.centroids.requires_grad


def test_state_dict_resume_continues_identically():
    a = make()
    a(views(batch()), {}, None)
    a(views(batch(seed=1)), {}, None)
    b = make()
    b.load_state_dict(a.state_dict())
    assert b.started and torch.equal(a.centroids, b.centroids)
    out_a, out_b = a(views(batch(seed=2)), {}, None), b(views(batch(seed=2)), {}, None)
    assert torch.equal(out_a.loss, out_b.loss) and torch.equal(a.centroids, b.centroids)
    assert int(b.cluster.num_forwards) == 3
    assert set(a.state_dict()) == {"cluster.centroids", "cluster.started", "cluster.start_step", "cluster.num_forwards"}


def test_centroids_fp32_under_half_precision_inputs():
    obj = make()
    z = batch().half()
    obj(views(z), {}, None)
    out = obj(views(batch(seed=1).half()), {}, None)
    assert obj.centroids.dtype == torch.float32 and out.loss.dtype == torch.float32
    rounded = make(centroid_dtype="model")
    rounded(views(z), {}, None)
    rounded(views(batch(seed=1).half()), {}, None)
    assert torch.equal(rounded.centroids, rounded.centroids.half().float())


# ---- the loss and its switches ---------------------------------------------------------------------
def started(**kw):
    obj = make(**kw)
    obj(views(batch()), {}, None)
    return obj


def expected_parts(obj, z):
    """State after the update the next forward performs, and the pieces of the loss, computed by hand."""
    z1, z2 = z[:, 0], z[:, 1]
    state = C.CentroidState(obj.k, z.shape[-1], obj.args.kmeans_optim, obj.args.kmeans_lr, obj.args.centroid_stat)
    state.load_state_dict(obj.cluster.state_dict())
    state.update(z1.detach())
    cos_xc, a = C.assign(z1.detach(), state.centroids)
    hard = state.centroids[C.second_nearest(cos_xc)]
    return cosine_matrix(z1, z2), hard, C.false_negative_mask(a)


def test_default_loss_is_batch_block_plus_mean_all_bml():
    obj = started(bml_weight=0.5)
    z = batch(seed=1)
    cos, hard, m = expected_parts(obj, z)
    logits = torch.cat([cos / 0.05, cosine_matrix(z[:, 0], hard) / 0.05], 1)
    want = F.cross_entropy(logits, torch.arange(8)) + 0.5 * C.bml_loss(cos, m, 0.2, 0.5, "mean_all")
    assert torch.allclose(obj(views(z), {}, None).loss, want, atol=1e-6)


def test_hard_negative_weight_on_own_centroid_column():
    obj = started(hnw=1.0)
    z = batch(seed=1)
    cos, hard, m = expected_parts(obj, z)
    blocks = obj.logit_blocks(z[:, 0], z[:, 1], cos, None, hard, m)
    assert [b.shape for b in blocks] == [(8, 8), (8, 8)]
    assert torch.allclose(blocks[1], cosine_matrix(z[:, 0], hard) / 0.05 + torch.eye(8))


def test_own_only_scope_one_column():
    obj = started(hardneg_scope="own_only", hnw=0.5)
    z = batch(seed=1)
    cos, hard, m = expected_parts(obj, z)
    blocks = obj.logit_blocks(z[:, 0], z[:, 1], cos, None, hard, m)
    assert blocks[1].shape == (8, 1)
    assert torch.allclose(blocks[1][:, 0], F.cosine_similarity(z[:, 0], hard) / 0.05 + 0.5, atol=1e-5)


def test_mask_denominator_and_mean_fn():
    obj = started(fn_handling="mask_denominator", bml_reduction="mean_fn", bml_weight=0.1)
    z = batch(seed=1)
    cos, hard, m = expected_parts(obj, z)
    assert m.any()
    s = (cos / 0.05).masked_fill(m, float("-inf"))
    logits = torch.cat([s, cosine_matrix(z[:, 0], hard) / 0.05], 1)
    want = F.cross_entropy(logits, torch.arange(8)) + 0.1 * C.bml_loss(cos, m, 0.2, 0.5, "mean_fn")
    out = obj(views(z), {}, None)
    assert torch.isfinite(out.loss) and torch.allclose(out.loss, want, atol=1e-6)
    assert out.logs["cluster/fn_pairs"].item() == m.sum().item()


def test_no_enable_hardneg_keeps_bml():
    obj = started(enable_hardneg=False, bml_weight=1.0)
    z = batch(seed=1)
    cos, hard, m = expected_parts(obj, z)
    want = F.cross_entropy(cos / 0.05, torch.arange(8)) + C.bml_loss(cos, m, 0.2, 0.5)
    assert torch.allclose(obj(views(z), {}, None).loss, want, atol=1e-6)


def test_dataset_hard_negatives_before_start_overwrite_and_keep():
    z = batch(v=3)
    z1, z2, z3 = z[:, 0], z[:, 1], z[:, 2]
    obj = make(kmean_cosine=-1.0, hnw=1.0)
    sup = torch.cat([cosine_matrix(z1, z2), cosine_matrix(z1, z3) + 0.05 * torch.eye(8)], 1) / 0.05
    assert torch.allclose(obj(views(z), {}, None).loss, F.cross_entropy(sup, torch.arange(8)), atol=1e-6)
    for mode, n_blocks in (("overwrite", 2), ("keep", 3)):
        obj = started(dataset_hardneg=mode, bml_weight=0.0)
        zz = batch(v=3, seed=1)
        cos, hard, m = expected_parts(obj, zz)
        blocks = obj.logit_blocks(zz[:, 0], zz[:, 1], cos, zz[:, 2], hard, m)
        assert len(blocks) == n_blocks
        assert torch.allclose(blocks[-1], cosine_matrix(zz[:, 0], hard) / 0.05)
        assert torch.allclose(obj(views(zz), {}, None).loss, F.cross_entropy(torch.cat(blocks, 1), torch.arange(8)), atol=1e-6)
    # --no_enable_hardneg: the dataset hard negatives stay after the start.
    obj = started(enable_hardneg=False, bml_weight=0.0)
    zz = batch(v=3, seed=1)
    cos, hard, m = expected_parts(obj, zz)
    blocks = obj.logit_blocks(zz[:, 0], zz[:, 1], cos, zz[:, 2], hard, m)
    assert len(blocks) == 2 and torch.allclose(blocks[1], cosine_matrix(zz[:, 0], zz[:, 2]) / 0.05)


def test_mixed_negatives_appended_side_by_side():
    mixcse = pytest.importorskip("clusterns.objectives.mixcse")
    obj = started(mix_negatives=True, mix_lambdas=0.3, bml_weight=0.0)
    plain = started(bml_weight=0.0)
    z = batch(seed=1, requires_grad=True)
    cos, hard, m = expected_parts(obj, z)
    combined = torch.cat(obj.logit_blocks(z[:, 0], z[:, 1], cos, None, hard, m), 1)
    own = torch.cat(plain.logit_blocks(z[:, 0], z[:, 1], cos, None, hard, m), 1)
    mixed = torch.cat(mixcse.mixed_negative_blocks(z[:, 0], z[:, 1], 0.3, 0.05), 1)
    assert combined.shape == (8, 8 + 8 + 16)
    assert torch.equal(combined, torch.cat([own, mixed], 1))
    out = obj(views(z), {}, None)
    assert torch.allclose(out.loss, F.cross_entropy(combined, torch.arange(8)), atol=1e-6)


@pytest.mark.parametrize("optim", ["momentum", "kmeans", "adamw"])
@pytest.mark.parametrize("init", ["greedy_chain", "kmeans_pp"])
def test_every_update_and_init_runs_and_moves_centroids(optim, init):
    obj = make(kmeans_optim=optim, centroid_init=init, kmeans_lr=0.1, centroid_stat="mean")
    obj(views(batch()), {}, None)
    c0 = obj.centroids.clone()
    out = obj(views(batch(seed=1, requires_grad=True)), {}, None)
    out.loss.backward()
    assert torch.isfinite(out.loss) and not torch.equal(c0, obj.centroids)


def test_fp32_math_inside_autocast():
    ref, amp = make(), make()
    z0, z1 = batch(), batch(seed=1)
    ref(views(z0), {}, None)
    want = ref(views(z1), {}, None).loss
    with torch.autocast("cpu", dtype=torch.bfloat16), fp32_region("cpu"):  # the trainer's precision boundary
        amp(views(z0), {}, None)
        got = amp(views(z1), {}, None).loss
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-6)
    assert torch.equal(amp.centroids, ref.centroids)


def test_start_trigger_at_exactly_the_threshold():
    """The original starts when mean(cos) <= --kmean_cosine: equal starts, a hair above does not."""
    z = batch(b=8, h=16, seed=3)
    mean = float(cosine_matrix(z[:, 0], z[:, 1]).mean())
    at = make(k=4, kmean_cosine=mean)
    at(views(z), {}, None)
    assert at.started  # a strict `<` would not start here
    below = make(k=4, kmean_cosine=float(torch.nextafter(torch.tensor(mean), torch.tensor(-2.0))))
    below(views(z), {}, None)
    assert not below.started
