#!/usr/bin/env python
"""2-D projection of STS-B sentence embeddings, coloured by cluster.

    python scripts/plot_embeddings.py MODEL_DIR [--data_dir SentEval/data/downstream] [--split dev]
                                      [--method pca|tsne] [--max_sentences 1000] [--output FILE.png]

The sentences are the distinct sentences of STS-B (`sts-<split>.csv`). Embeddings are
SentenceEncoder.encode (the evaluation vector), L2-normalised, projected with PCA (default) or
t-SNE (cosine metric, PCA init), both from scikit-learn.

Colours: for a ClusterNS checkpoint (objective.safetensors with started centroids beside the
weights), each sentence's cluster is the argmax cosine to the stored centroids
`cluster.centroids`, computed in the space the centroids live in: the training embedding
(after the projector, also with --mlp_only_train). Other models (or --kmeans N) are coloured by
spherical-ish k-means (scikit-learn KMeans on the normalised vectors). The --top largest clusters
get colours, the rest are grey. Needs matplotlib (Agg) and scikit-learn.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

OBJECTIVE_STATE = "objective.safetensors"
CENTROIDS_KEY = "cluster.centroids"  # ClusterNSObjective.cluster (clusterns/objectives/clusterns/clustering.py CentroidState)
STARTED_KEY = "cluster.started"


def stsb_file(data_dir: str, split: str) -> Path:
    root = Path(data_dir)
    for candidate in (root / "STS" / "STSBenchmark", root / "downstream" / "STS" / "STSBenchmark", root / "STSBenchmark", root):
        if (candidate / f"sts-{split}.csv").is_file():
            return candidate / f"sts-{split}.csv"
    raise FileNotFoundError(
        f"no STSBenchmark/sts-{split}.csv under {data_dir!r} (give the SentEval 'downstream' folder, "
        "see SentEval/data/downstream/download_dataset.sh)")


def load_sentences(path: Path, limit: int | None, seed: int) -> list[str]:
    seen: dict[str, None] = {}
    with open(path, encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                for s in row[5:7]:
                    s = s.strip()
                    if s:
                        seen.setdefault(s)
    sentences = list(seen)
    if not sentences:
        raise ValueError(f"{path} holds no sentence pairs")
    if limit and len(sentences) > limit:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(sentences), size=limit, replace=False))
        sentences = [sentences[i] for i in keep]
    return sentences


def read_centroids(model_dir: str):
    """(centroids [K, H] float32, started) from the checkpoint's objective state, or None."""
    path = Path(model_dir, OBJECTIVE_STATE)
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    state = load_file(str(path))
    if CENTROIDS_KEY not in state:
        return None
    started = bool(state[STARTED_KEY]) if STARTED_KEY in state else True
    return state[CENTROIDS_KEY].float().numpy(), started


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def training_space(encoder, sentences: list[str], batch_size: int) -> np.ndarray:
    """The embedding the objective (and its centroids) saw: pooler output through the projector."""
    config = encoder.config
    if config.projector == "none" or config.projector_at_eval:
        return encoder.encode(sentences, batch_size=batch_size)
    saved = config.mlp_only_train
    config.mlp_only_train = False
    try:
        return encoder.encode(sentences, batch_size=batch_size)
    finally:
        config.mlp_only_train = saved


def assign(model_dir: str, encoder, sentences: list[str], emb: np.ndarray, kmeans: int | None, seed: int,
           batch_size: int) -> tuple[np.ndarray, str]:
    state = None if kmeans else read_centroids(model_dir)
    if state is not None:
        centroids, started = state
        if not started:
            print("note: the ClusterNS centroids were never initialised (clustering did not start); using k-means",
                  file=sys.stderr)
        else:
            z = training_space(encoder, sentences, batch_size)
            if z.shape[1] != centroids.shape[1]:
                raise ValueError(f"centroids have {centroids.shape[1]} dimensions, the embeddings {z.shape[1]}")
            labels = np.argmax(normalise(z) @ normalise(centroids).T, axis=1)
            used = len(np.unique(labels))
            return labels, f"ClusterNS centroids (K={len(centroids)}, {used} used)"
    from sklearn.cluster import KMeans

    k = min(kmeans or 8, len(sentences))
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(normalise(emb))
    return labels, f"k-means on the embeddings (K={k})"


def project(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    x = normalise(x)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    return TSNE(n_components=2, init="pca", metric="cosine", perplexity=perplexity, random_state=seed).fit_transform(x)


def draw(points: np.ndarray, labels: np.ndarray, top: int, title: str, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids, counts = np.unique(labels, return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    size = dict(zip(ids, counts))
    coloured = list(order[:top])
    palette = plt.get_cmap("tab10" if len(coloured) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(8, 7))
    rest = ~np.isin(labels, coloured)
    if rest.any():
        ax.scatter(points[rest, 0], points[rest, 1], s=6, c="lightgray", label=f"other clusters ({int(rest.sum())})")
    for i, cluster in enumerate(coloured):
        mask = labels == cluster
        ax.scatter(points[mask, 0], points[mask, 1], s=9, color=palette(i % palette.N), label=f"cluster {cluster} ({size[cluster]})")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="best", framealpha=0.8)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a saved encoder folder (train.py output or checkpoint-N)")
    parser.add_argument("--data_dir", default=os.path.join("SentEval", "data", "downstream"),
                        help="SentEval 'downstream' folder (or the STSBenchmark folder)")
    parser.add_argument("--split", default="dev", choices=["train", "dev", "test"], help="STS-B split (default dev)")
    parser.add_argument("--method", default="pca", choices=["pca", "tsne"], help="2-D projection (default pca)")
    parser.add_argument("--max_sentences", type=int, default=1000, help="random subset of this many distinct sentences (0: all)")
    parser.add_argument("--kmeans", type=int, default=None, help="colour by k-means with this K even for a ClusterNS checkpoint")
    parser.add_argument("--top", type=int, default=10, help="colour the largest TOP clusters, grey the rest (default 10)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="PNG path (default MODEL_DIR/plots/embeddings_<method>.png)")
    args = parser.parse_args(argv)
    if args.top < 1 or (args.kmeans is not None and args.kmeans < 1):
        parser.error("--top and --kmeans must be >= 1")
    try:
        from clusterns.modeling.encoder import SentenceEncoder

        sentences = load_sentences(stsb_file(args.data_dir, args.split), args.max_sentences, args.seed)
        encoder = SentenceEncoder.from_pretrained(args.model_dir)
        emb = encoder.encode(sentences, batch_size=args.batch_size)
        labels, how = assign(args.model_dir, encoder, sentences, emb, args.kmeans, args.seed, args.batch_size)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    points = project(emb, args.method, args.seed)
    output = Path(args.output) if args.output else Path(args.model_dir, "plots", f"embeddings_{args.method}.png")
    name = Path(args.model_dir).resolve().name
    title = f"{name}: {len(sentences)} STS-B {args.split} sentences, {'PCA' if args.method == 'pca' else 't-SNE'}, coloured by {how}"
    draw(points, labels, args.top, title, output)
    sizes = np.bincount(labels)
    print(f"{how}: sizes of the largest clusters {sorted(sizes[sizes > 0].tolist(), reverse=True)[:args.top]}")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
