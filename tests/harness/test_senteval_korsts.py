"""KorSTS: the 8 metrics against scipy, the per-batch protocol, the task on real data."""
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
from senteval.korsts import METRICS, korsts_metrics, korsts_per_batch  # noqa: E402
from senteval.toy import bow_batcher  # noqa: E402
from senteval.utils import DataFormatError  # noqa: E402


def korsts_mirror() -> Path:
    root = Path(os.environ.get("CLUSTERNS_DATA_MIRROR", REPO.parent / "shared" / "data"))
    if not (root / "korsts" / "sts-dev.tsv").is_file():
        pytest.skip(f"KorSTS mirror not found under {root}")
    return root / "korsts"


def manual_metrics(a, b, y):
    cos = [float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))) for u, v in zip(a, b)]
    euc = [-float(np.sqrt(((u - v) ** 2).sum())) for u, v in zip(a, b)]
    man = [-float(np.abs(u - v).sum()) for u, v in zip(a, b)]
    dot = [float(np.dot(u, v)) for u, v in zip(a, b)]
    out = {}
    for name, sc in (("cosine", cos), ("euclidean", euc), ("manhattan", man), ("dot", dot)):
        out[f"{name}_pearson"] = pearsonr(sc, y)[0]
        out[f"{name}_spearman"] = spearmanr(sc, y)[0]
    return out


def test_eight_metrics_match_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(25, 6))
    b = a + rng.normal(scale=0.8, size=(25, 6))
    y = rng.uniform(0, 5, size=25) / 5
    got = korsts_metrics(a, b, y)
    want = manual_metrics(a, b, y)
    assert set(METRICS) <= set(got) and len(METRICS) == 8
    for k in METRICS:
        assert got[k] == pytest.approx(want[k], abs=1e-9), k
    assert got["average"] == pytest.approx(np.mean([want[k] for k in METRICS]), abs=1e-9)


def test_per_batch_protocol_averages_batches():
    rng = np.random.default_rng(1)
    n = 600
    a = rng.normal(size=(n, 5))
    b = a + rng.normal(size=(n, 5))
    y = rng.uniform(0, 1, size=n)
    got = korsts_per_batch(a, b, y, batch_size=256, seed=42)
    import torch

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(42)).numpy()
    batches = [perm[i:i + 256] for i in range(0, n, 256)]
    assert got["nbatches"] == 3
    per = [manual_metrics(a[i], b[i], y[i]) for i in batches]
    for k in METRICS:
        assert got[k] == pytest.approx(np.mean([m[k] for m in per]), abs=1e-9)
    sel = np.mean([max(m[f"{s}_spearman"] for s in ("cosine", "euclidean", "manhattan", "dot")) for m in per])
    assert got["select"] == pytest.approx(sel, abs=1e-9)
    # whole-set numbers differ from per-batch ones
    assert korsts_metrics(a, b, y)["cosine_spearman"] != pytest.approx(got["cosine_spearman"], abs=1e-6)


def test_korsts_task_on_real_data():
    path = korsts_mirror()
    params = {"task_path": str(path.parent), "korsts_path": str(path), "korsts_per_batch": True}
    res = senteval.engine.SE(params, bow_batcher).eval("KorSTS")
    assert res["dev"]["nsamples"] == 1500 and res["test"]["nsamples"] == 1379
    assert res["dev"]["per_batch"]["nbatches"] == 6 and res["test"]["per_batch"]["nbatches"] == 6
    for k in METRICS:
        assert -1 <= res["test"][k] <= 1
    only_dev = senteval.engine.SE(dict(params, eval_splits=["dev"]), bow_batcher).eval("KorSTS")
    assert set(only_dev) == {"dev"}
    assert only_dev["dev"]["cosine_spearman"] == pytest.approx(res["dev"]["cosine_spearman"], abs=1e-9)


def test_korsts_malformed_line(tmp_path):
    header = "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\n"
    (tmp_path / "sts-dev.tsv").write_text(header + "g\tf\ty\t1\t2.0\t가\t나\ng\tf\ty\t2\t3.0\t가\n")
    (tmp_path / "sts-test.tsv").write_text(header)
    with pytest.raises(DataFormatError, match=r"sts-dev.tsv:3"):
        senteval.engine.SE({"task_path": str(tmp_path), "korsts_path": str(tmp_path)}, None).build("KorSTS")
