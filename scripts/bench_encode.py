"""Time SentenceEncoder.encode() against sentence-transformers' encode() on short and on long sentences.

    python scripts/bench_encode.py [--source FILE] [--batch_size 128] [--repeat 3] [--update_md BENCHMARKS.md]

One model (the offline all-MiniLM-L6-v2, mean pooling: the same network and pooling in both libraries), one process,
CPU threads as torch sets them. Sets, drawn from --source (default: the shared English corpus, else the built-in
sentences joined): `short` (sentences of at most 32 subword tokens) and `long` (50-100 tokens: --source lines, or
built-in sentences joined until they are that long). Each set is encoded by sentence-transformers (its encode(),
which sorts by character length and tokenizes per batch), by our encode() on the plain Hugging Face forward, by
our encode() with the packed linear layers (--packed_linear, modeling/packing.py), and by the packed one with
torch's F.linear instead of oneDNN's (encode(fast_linear=False), modeling/cpu_linear.py), interleaved, fastest of
--repeat.
Tokenization is inside the timing for all (and normalization where the sentence-transformers model has a
Normalize module). The unit vectors are compared (they must agree to 1e-4).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))

from bench.sentences import BUILTIN_SENTENCES, default_model  # noqa: E402
from benchmarks_md import command_line, machine, publish, section_start, short_model_name, utc_now  # noqa: E402

KINDS = ("st", "plain", "packed", "torch_linear")
TARGET = 1.5  # issue 23: encode at least 1.5x sentence-transformers on both sets
DEFAULT_SOURCE = os.path.join(REPO, "..", "shared", "data", "corpus", "en_sentences.txt")


def sentence_sets(path: str | None, tokenizer, count: int, seed: int = 0) -> dict[str, list[str]]:
    """{"short": <= 32 tokens, "long": 50-100 tokens}, `count` each (fewer if the source has fewer)."""
    if path:
        with open(path, encoding="utf-8") as f:
            pool = [line.strip() for line in f if line.strip()]
    else:
        pool = list(BUILTIN_SENTENCES)
    random.Random(seed).shuffle(pool)
    lengths = [len(ids) for ids in tokenizer(pool, truncation=False)["input_ids"]]
    short = [s for s, n in zip(pool, lengths) if n <= 32][:count]
    long_ = [s for s, n in zip(pool, lengths) if 50 <= n <= 100][:count]
    rng = random.Random(seed + 1)
    while len(long_) < count and short:  # join short sentences until they are long enough
        text = " ".join(rng.choice(short) for _ in range(rng.randint(3, 5)))
        if 50 <= len(tokenizer(text)["input_ids"]) <= 100:
            long_.append(text)
    return {"short": short, "long": long_}


def markdown(out: dict) -> str:
    lines = section_start(
        "Encoding: encode() vs sentence-transformers (CPU)", out, out["torch_threads"],
        f"model `{short_model_name(out['model'])}` (mean pooling in both), batch {out['batch_size']}, fastest of "
        f"{out['repeat']} interleaved runs, tokenization included; load average during the runs {out['load']}.") + [
        "",
        "| set | sentences | mean tokens | sentence-transformers (s) | ours, plain forward (s) | ours, packed (s) | "
        "ours, packed, torch's F.linear (s) | plain vs ST | packed vs ST | packed, F.linear vs ST |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in out["sets"].items():
        lines.append(f"| {name} | {r['sentences']} | {r['mean_tokens']:.1f} | {r['st_s']:.2f} | {r['plain_s']:.2f} | "
                     f"{r['packed_s']:.2f} | {r['torch_linear_s']:.2f} | {r['plain_vs_st']:.2f}x | {r['packed_vs_st']:.2f}x | "
                     f"{r['st_s'] / r['torch_linear_s']:.2f}x |")
    lines.append("")
    for name, r in out["sets"].items():
        best = max(r["plain_vs_st"], r["packed_vs_st"])
        lines.append(f"- target (issue 23): encode >= {TARGET}x sentence-transformers on the {name} set: "
                     f"{'met' if best >= TARGET else '**not met**'} ({best:.2f}x); largest difference between the "
                     f"libraries' vectors {r['max_abs_diff']:.1e}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_name_or_path", default=None)
    ap.add_argument("--source", default=None, help="one sentence per line (default: ../shared/data/corpus/en_sentences.txt if present)")
    ap.add_argument("--count", type=int, default=1000, help="sentences per set")
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--update_md", default=None, metavar="FILE")
    a = ap.parse_args(argv)
    if a.count < 1 or a.batch_size < 1 or a.repeat < 1:
        print("error: --count, --batch_size and --repeat must be positive", file=sys.stderr)
        return 2
    source = a.source if a.source is not None else (DEFAULT_SOURCE if os.path.isfile(DEFAULT_SOURCE) else None)
    if source is not None and not os.path.isfile(source):
        print(f"error: --source {source!r} is not a file", file=sys.stderr)
        return 2

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from clusterns.modeling.encoder import SentenceEncoder
    from clusterns.modeling.packing import disable_packed_linear, enable_packed_linear

    model = a.model_name_or_path or default_model()
    ours = SentenceEncoder.from_pretrained(model, pooler="avg", device="cpu")
    st = SentenceTransformer(model, device="cpu")
    st.max_seq_length = ours.tokenizer.model_max_length if ours.tokenizer.model_max_length < 100_000 else 512
    sets = sentence_sets(source, ours.tokenizer, a.count)
    # all-MiniLM-L6-v2's sentence-transformers pipeline ends with Normalize: ours does the same work then
    normalized = any(type(module).__name__ == "Normalize" for module in st)
    loads: list[float] = []

    def encode(kind: str, sentences: list[str]):
        if kind == "st":
            return st.encode(sentences, batch_size=a.batch_size, convert_to_numpy=True)
        (disable_packed_linear if kind == "plain" else enable_packed_linear)(ours.backbone)
        return ours.encode(sentences, batch_size=a.batch_size, max_seq_length=st.max_seq_length,
                           normalize_embeddings=normalized, fast_linear=kind != "torch_linear")

    results = {}
    for name, sentences in sets.items():
        if not sentences:
            continue
        for kind in KINDS:  # warm-up
            encode(kind, sentences[: a.batch_size])
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        vectors = {}
        for _ in range(a.repeat):
            for kind in times:
                loads.append(os.getloadavg()[0])
                start = time.perf_counter()
                vectors[kind] = encode(kind, sentences)
                times[kind].append(time.perf_counter() - start)
        best = {kind: min(t) for kind, t in times.items()}
        unit = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in vectors.items()}
        diff = max(float(np.abs(unit["st"] - unit[kind]).max()) for kind in KINDS[1:])
        tokens = [len(ids) for ids in ours.tokenizer(sentences)["input_ids"]]
        results[name] = {"sentences": len(sentences), "mean_tokens": sum(tokens) / len(tokens), "st_s": best["st"],
                         "plain_s": best["plain"], "packed_s": best["packed"], "torch_linear_s": best["torch_linear"],
                         "plain_vs_st": best["st"] / best["plain"],
                         "packed_vs_st": best["st"] / best["packed"], "max_abs_diff": diff, "runs": times}
        print(f"{name}: {len(sentences)} sentences, sentence-transformers {best['st']:.2f} s, ours {best['plain']:.2f} s "
              f"({best['st'] / best['plain']:.2f}x), packed {best['packed']:.2f} s ({best['st'] / best['packed']:.2f}x); "
              f"max |difference| {diff:.1e}")
        if diff > 1e-4:
            print(f"error: the vectors of the {name} set differ by {diff:.1e}", file=sys.stderr)
            return 1
    out = {"sets": results, "batch_size": a.batch_size, "repeat": a.repeat, "model": model, "source": source,
           "torch_threads": torch.get_num_threads(), "load": f"{min(loads):.1f}-{max(loads):.1f}" if loads else "n/a",
           "machine": machine(), "command": command_line("scripts/bench_encode.py", argv), "measured_at": utc_now()}
    publish(out, markdown(out), "bench_encode", a.markdown, a.update_md, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
