"""STS harness: fidelity with SimCSE's SentEval (toy encoder, synthetic aggregates), loaders,
splits, deduplication, and clear errors on bad data."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "SentEval") not in sys.path:
    sys.path.insert(0, str(REPO / "SentEval"))

import senteval  # noqa: E402
from senteval import sts  # noqa: E402
from senteval.toy import bow_batcher  # noqa: E402
from senteval.utils import DataFormatError, MissingDataError, default_similarity  # noqa: E402


def mirror() -> Path:
    root = Path(os.environ.get("CLUSTERNS_DATA_MIRROR", REPO.parent / "shared" / "data"))
    path = root / "senteval"
    if not (path / "STS").is_dir():
        pytest.skip(f"SentEval data mirror not found at {path} (set CLUSTERNS_DATA_MIRROR)")
    return path


# spec senteval.md section 11: toy bag-of-words encoder on the raw English files
TOY_EXPECTED = {"STS12": 0.2962, "STS13": 0.4665, "STS14": 0.4553, "STS15": 0.6115, "STS16": 0.5169}
TOY_STSB = {"dev": 0.5346, "test": 0.4328}


def reference_sts_run(evaluation, batch_size, batcher, datasets=None):
    """SimCSE's STSEval.run, transcribed: per subset, batches of both sides in sorted order,
    per-pair cosine, pooled 'all'. No deduplication: the oracle for the fast path."""
    results, all_sys, all_gs = {}, [], []
    for dataset in datasets or evaluation.datasets:
        input1, input2, gs_scores = evaluation.data[dataset]
        sys_scores = []
        for ii in range(0, len(gs_scores), batch_size):
            enc1 = batcher(None, input1[ii:ii + batch_size])
            enc2 = batcher(None, input2[ii:ii + batch_size])
            sys_scores += [default_similarity(enc1[k], enc2[k]) for k in range(enc2.shape[0])]
        all_sys += sys_scores
        all_gs += gs_scores
        results[dataset] = {"pearson": pearsonr(sys_scores, gs_scores),
                            "spearman": spearmanr(sys_scores, gs_scores), "nsamples": len(sys_scores)}
    w = [results[d]["nsamples"] for d in results]
    prs = np.array([results[d]["pearson"][0] for d in results])
    sps = np.array([results[d]["spearman"][0] for d in results])
    results["all"] = {"pearson": {"all": pearsonr(all_sys, all_gs)[0], "mean": prs.mean(), "wmean": np.average(prs, weights=w)},
                      "spearman": {"all": spearmanr(all_sys, all_gs)[0], "mean": sps.mean(), "wmean": np.average(sps, weights=w)}}
    return results


@pytest.fixture(scope="module")
def toy_results():
    params = {"task_path": str(mirror()), "batch_size": 128}
    tasks = ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness"]
    return senteval.engine.SE(params, bow_batcher).eval(tasks)


@pytest.mark.parametrize("task", list(TOY_EXPECTED))
def test_toy_encoder_all_spearman_matches_spec(toy_results, task):
    assert toy_results[task]["all"]["spearman"]["all"] == pytest.approx(TOY_EXPECTED[task], abs=5e-5)


def test_toy_encoder_stsb_matches_spec(toy_results):
    for split, want in TOY_STSB.items():
        assert toy_results["STSBenchmark"][split]["spearman"][0] == pytest.approx(want, abs=5e-5)
    # SimCSE reads .correlation on the test split
    assert toy_results["STSBenchmark"]["test"]["spearman"].correlation == pytest.approx(0.4328, abs=5e-5)


@pytest.mark.parametrize("task", ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness"])
def test_fast_path_equals_simcse_reference_to_1e6(toy_results, task):
    evaluation = senteval.engine.SE({"task_path": str(mirror())}, None).build(task)
    ref = reference_sts_run(evaluation, 128, bow_batcher)
    got = toy_results[task]
    for d in evaluation.datasets:
        for m in ("pearson", "spearman"):
            assert got[d][m][0] == pytest.approx(ref[d][m][0], abs=1e-6)
        assert got[d]["nsamples"] == ref[d]["nsamples"]
    for m in ("pearson", "spearman"):
        for agg in ("all", "mean", "wmean"):
            assert got["all"][m][agg] == pytest.approx(ref["all"][m][agg], abs=1e-6)


class WholeTaskBatcher:
    """bow_batcher declaring ``batches_itself``: the harness must hand it each task's distinct sentences at once."""

    batches_itself = True

    def __init__(self):
        self.calls = []

    def __call__(self, params, batch):
        self.calls.append(len(batch))
        return bow_batcher(params, batch)


def test_batcher_that_batches_itself_gets_one_call_per_task_same_numbers(toy_results):
    tasks = ["STS12", "STS16", "STSBenchmark", "SICKRelatedness"]
    batcher = WholeTaskBatcher()
    got = senteval.engine.SE({"task_path": str(mirror()), "batch_size": 128}, batcher).eval(tasks)
    assert len(batcher.calls) == len(tasks) and min(batcher.calls) > 128
    for task in tasks:
        for key, value in toy_results[task].items():
            if key == "all":
                for m in ("pearson", "spearman"):
                    for agg in ("all", "mean", "wmean"):
                        assert got[task]["all"][m][agg] == pytest.approx(value[m][agg], abs=1e-9)
            elif isinstance(value, dict) and "spearman" in value:
                assert got[task][key]["spearman"][0] == pytest.approx(value["spearman"][0], abs=1e-9)


def test_batcher_that_batches_itself_wrong_shape_is_a_clear_error(tmp_path):
    rows = [("s1", "s2", "1.0"), ("s2", "s3", "2.0")]
    write_sts_year(tmp_path / "T", {"alpha": rows, "beta": rows})

    def short(params, batch):
        return np.zeros((1, 3))

    short.batches_itself = True
    with pytest.raises(ValueError, match="for 3 sentences"):
        TinySTS12(str(tmp_path / "T")).run(senteval.utils.dotdict(batch_size=2), short)


def test_loader_counts_on_real_data():
    se = senteval.engine.SE({"task_path": str(mirror())}, None)
    counts = {"STS12": 3108, "STS13": 1500, "STS14": 3750, "STS15": 3000, "STS16": 1186}
    for task, n in counts.items():
        assert sum(len(v[2]) for v in se.build(task).data.values()) == n
    assert [len(se.build("STSBenchmark").data[s][2]) for s in ("train", "dev", "test")] == [5749, 1500, 1379]
    assert [len(se.build("SICKRelatedness").data[s][2]) for s in ("train", "dev", "test")] == [4500, 500, 4927]
    sts16 = se.build("STS16").data
    assert [len(sts16[d][2]) for d in sts.STS16Eval.datasets] == [254, 249, 230, 244, 209]


# ---- synthetic data ---------------------------------------------------------------------------

def write_sts_year(folder: Path, subsets: dict[str, list[tuple[str, str, str]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in subsets.items():
        (folder / f"STS.input.{name}.txt").write_text("".join(f"{a}\t{b}\n" for a, b, _ in rows))
        (folder / f"STS.gs.{name}.txt").write_text("".join(f"{g}\n" for _, _, g in rows))


class VecBatcher:
    """Each sentence 'sN' maps to a fixed vector; records every sentence it is asked for."""

    def __init__(self, dim=8, seed=0):
        self.rng = np.random.default_rng(seed)
        self.vecs, self.seen, self.dim = {}, [], dim

    def __call__(self, params, batch):
        out = []
        for toks in batch:
            s = " ".join(toks)
            self.seen.append(s)
            if s not in self.vecs:
                self.vecs[s] = self.rng.normal(size=self.dim).astype(np.float32)
            out.append(self.vecs[s])
        return np.stack(out)


class TinySTS12(sts.STSEval):
    task_name = "TINY"
    datasets = ["alpha", "beta"]


def test_all_mean_wmean_on_synthetic_scores(tmp_path):
    rng = np.random.default_rng(3)
    alpha = [(f"s{i}", f"s{i + 100}", f"{rng.uniform(0, 5):.2f}") for i in range(30)]
    beta = [(f"s{i + 200}", f"s{i + 300}", f"{rng.uniform(0, 5):.2f}") for i in range(10)]
    write_sts_year(tmp_path / "TINY", {"alpha": alpha, "beta": beta})
    batcher = VecBatcher()
    ev = TinySTS12(str(tmp_path / "TINY"))
    ev.do_prepare(senteval.utils.dotdict(), lambda p, s: None)
    res = ev.run(senteval.utils.dotdict(batch_size=7), batcher)

    def cos(a, b):
        u, v = batcher.vecs[a], batcher.vecs[b]
        return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))

    per = {}
    pooled_sys, pooled_gs = [], []
    for name, rows in (("alpha", alpha), ("beta", beta)):
        s = [cos(a, b) for a, b, _ in rows]
        g = [float(x) for _, _, x in rows]
        per[name] = (spearmanr(s, g)[0], pearsonr(s, g)[0], len(s))
        pooled_sys += s
        pooled_gs += g
    sp = np.array([per[n][0] for n in per])
    pr = np.array([per[n][1] for n in per])
    w = np.array([per[n][2] for n in per])
    assert res["all"]["spearman"]["all"] == pytest.approx(spearmanr(pooled_sys, pooled_gs)[0], abs=1e-6)
    assert res["all"]["pearson"]["all"] == pytest.approx(pearsonr(pooled_sys, pooled_gs)[0], abs=1e-6)
    assert res["all"]["spearman"]["mean"] == pytest.approx(sp.mean(), abs=1e-6)
    assert res["all"]["spearman"]["wmean"] == pytest.approx((sp * w).sum() / w.sum(), abs=1e-6)
    assert res["all"]["pearson"]["wmean"] == pytest.approx((pr * w).sum() / w.sum(), abs=1e-6)
    # the pooled value genuinely differs from the averages
    assert abs(res["all"]["spearman"]["all"] - res["all"]["spearman"]["mean"]) > 1e-4
    assert res["alpha"]["nsamples"] == 30 and res["beta"]["nsamples"] == 10


def test_empty_gold_lines_skipped_and_each_sentence_encoded_once(tmp_path):
    rows = [("s1", "s2", "1.0"), ("s1", "s3", ""), ("s2", "s1", "4.5"), ("s4", "s5", ""), ("s5", "s1", "2.0"),
            ("s1", "s2", "3.0")]
    write_sts_year(tmp_path / "T", {"alpha": rows, "beta": rows})
    batcher = VecBatcher()
    ev = TinySTS12(str(tmp_path / "T"))
    assert [len(ev.data[d][2]) for d in ev.datasets] == [4, 4]
    res = ev.run(senteval.utils.dotdict(batch_size=2), batcher)
    assert res["alpha"]["nsamples"] == 4
    assert sorted(batcher.seen) == ["s1", "s2", "s5"]  # s3/s4 only in unlabelled pairs; no repeats


def test_torch_tensor_batcher_and_zero_vector(tmp_path):
    torch = pytest.importorskip("torch")
    write_sts_year(tmp_path / "T", {"alpha": [("a b", "c", "1"), ("zero", "c", "2"), ("a", "c d", "3")],
                                    "beta": [("a b", "c d", "1"), ("a", "c", "2")]})

    def batcher(params, batch):
        out = torch.zeros(len(batch), 4)
        for i, toks in enumerate(batch):
            if toks != ["zero"]:
                out[i, : len(toks) + 1] = 1.0
        return out

    res = TinySTS12(str(tmp_path / "T")).run(senteval.utils.dotdict(batch_size=128), batcher)
    assert np.isfinite(res["all"]["spearman"]["all"])


def make_split_task(root: Path, n=12) -> Path:
    rng = np.random.default_rng(0)
    stsb = root / "STS" / "STSBenchmark"
    stsb.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        lines = [f"g\tf\t2012\t{i:04d}\t{rng.uniform(0, 5):.3f}\t{split} a{i} x\t{split} b{i} y y" for i in range(n)]
        (stsb / f"sts-{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_eval_splits_encodes_only_reported_split(tmp_path):
    root = make_split_task(tmp_path)
    batcher = VecBatcher()
    res = senteval.engine.SE({"task_path": str(root), "eval_splits": ["test"]}, batcher).eval("STSBenchmark")
    assert set(res) == {"test", "all"}
    assert batcher.seen and all(s.startswith("test ") for s in batcher.seen)
    full = senteval.engine.SE({"task_path": str(root)}, VecBatcher()).eval("STSBenchmark")
    assert set(full) == {"train", "dev", "test", "all"}


def test_task_path_accepts_parent_of_downstream(tmp_path):
    make_split_task(tmp_path / "downstream")
    res = senteval.engine.SE({"task_path": str(tmp_path)}, VecBatcher()).eval(["STSBenchmark"])
    assert "STSBenchmark" in res


# ---- errors -----------------------------------------------------------------------------------

def test_missing_folder_and_files_are_listed(tmp_path):
    (tmp_path / "STS" / "STS12-en-test").mkdir(parents=True)
    (tmp_path / "STS" / "STS12-en-test" / "STS.input.MSRpar.txt").write_text("a\tb\n")
    se = senteval.engine.SE({"task_path": str(tmp_path)}, None)
    with pytest.raises(MissingDataError) as e:
        se.build("STS12")
    msg = str(e.value)
    assert "STS.gs.MSRpar.txt" in msg and "STS.input.MSRvid.txt" in msg and "download_dataset.sh" in msg
    with pytest.raises(MissingDataError, match="STS13-en-test"):
        se.build("STS13")
    with pytest.raises(MissingDataError, match="download_dataset.sh"):
        senteval.engine.SE({"task_path": str(tmp_path / "nope")}, None).build("STS12")


def test_malformed_input_line_names_file_and_line(tmp_path):
    write_sts_year(tmp_path / "T", {"alpha": [("a", "b", "1"), ("c", "d", "2")], "beta": [("a", "b", "1")]})
    p = tmp_path / "T" / "STS.input.alpha.txt"
    p.write_text("a\tb\nno tab here\n")
    with pytest.raises(DataFormatError, match=r"STS.input.alpha.txt:2"):
        TinySTS12(str(tmp_path / "T"))


def test_gold_length_mismatch(tmp_path):
    write_sts_year(tmp_path / "T", {"alpha": [("a", "b", "1"), ("c", "d", "2")], "beta": [("a", "b", "1")]})
    (tmp_path / "T" / "STS.gs.alpha.txt").write_text("1\n")
    with pytest.raises(DataFormatError, match=r"STS.gs.alpha.txt has 1 lines but .*STS.input.alpha.txt has 2"):
        TinySTS12(str(tmp_path / "T"))


def test_non_numeric_gold_names_file_and_line(tmp_path):
    write_sts_year(tmp_path / "T", {"alpha": [("a", "b", "1"), ("c", "d", "x4")], "beta": [("a", "b", "1")]})
    with pytest.raises(DataFormatError, match=r"STS.gs.alpha.txt:2: non-numeric"):
        TinySTS12(str(tmp_path / "T"))
    root = make_split_task(tmp_path / "d")
    (root / "STS" / "STSBenchmark" / "sts-dev.csv").write_text("g\tf\t2012\t0\t1.0\ta\tb\ng\tf\t2012\t1\tbad\ta\tb\n")
    with pytest.raises(DataFormatError, match=r"sts-dev.csv:2: non-numeric"):
        senteval.engine.SE({"task_path": str(root)}, None).build("STSBenchmark")
    (root / "STS" / "STSBenchmark" / "sts-dev.csv").write_text("g\tf\t2012\t0\t1.0\ta\n")
    with pytest.raises(DataFormatError, match=r"sts-dev.csv:1: expected at least 7"):
        senteval.engine.SE({"task_path": str(root)}, None).build("STSBenchmark")


def test_unknown_task():
    with pytest.raises(ValueError, match="not a task"):
        senteval.engine.SE({"task_path": "."}, None).eval("STS99")


def test_finetune_regressor_runs_on_cpu(tmp_path, monkeypatch):
    from senteval.tools import relatedness

    init = relatedness.RelatednessPytorch.__init__

    def short(self, *a, **k):  # the same loop, capped at 100 epochs to keep the test fast
        init(self, *a, **k)
        self.maxepoch = 100

    monkeypatch.setattr(relatedness.RelatednessPytorch, "__init__", short)
    root = make_split_task(tmp_path, n=40)
    res = senteval.engine.SE({"task_path": str(root), "device": "cpu"}, VecBatcher()).eval("STSBenchmark-finetune")
    assert {"devspearman", "pearson", "spearman", "mse", "yhat", "ndev", "ntest"} <= set(res)
    assert res["ntest"] == 40 and len(res["yhat"]) == 40


def test_encode_labels_soft_targets():
    y = sts.encode_labels([1.0, 2.4, 5.0])
    np.testing.assert_allclose(y[0], [1, 0, 0, 0, 0])
    np.testing.assert_allclose(y[1], [0, 0.6, 0.4, 0, 0], atol=1e-6)
    np.testing.assert_allclose(y[2], [0, 0, 0, 0, 1])
