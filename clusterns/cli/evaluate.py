"""evaluation.py and `clusterns-evaluate`: evaluate a checkpoint on SentEval tasks and print SimCSE's tables (plus JSON).

    python evaluation.py --model_name_or_path result/my-unsup-simcse --pooler cls_before_pooler \
        --task_set sts --mode test [--output_json results.json]

Flags follow SimCSE's evaluation.py (--model_name_or_path --pooler --mode --task_set --tasks);
added: --data_dir, --batch_size, --max_seq_length, --output_json, --device, --korsts,
--korsts_dir, --korsts_per_batch. Works with our checkpoints and plain HF BERT/RoBERTa
folders, through SentenceEncoder.encode only.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from typing import Any

import numpy as np
import torch
from prettytable import PrettyTable

from clusterns.harness import SE, DataFormatError, MissingDataError, clustering, progress_bar_disabled, resolve_downstream, senteval, sts_files
from clusterns.io import CONFIG_NAME
from clusterns.precision import PRECISIONS, resolve_precision
from clusterns.modeling.encoder import EncoderConfig, SentenceEncoder
from clusterns.modeling.poolers import pooler_names
from clusterns.modeling.prompt import check_convention, check_template_syntax, prompt_config
from clusterns.modeling.prompt.settings import CONVENTIONS

STS_TASKS = ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness"]
TRANSFER_TASKS = ["MR", "CR", "MPQA", "SUBJ", "SST2", "TREC", "MRPC"]
TRANSFER_TABLE = ["MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC"]  # SimCSE's print order

KORSTS_COLUMNS = [("Cos P", "cosine_pearson"), ("Cos S", "cosine_spearman"),
                  ("Euc P", "euclidean_pearson"), ("Euc S", "euclidean_spearman"),
                  ("Man P", "manhattan_pearson"), ("Man S", "manhattan_spearman"),
                  ("Dot P", "dot_pearson"), ("Dot S", "dot_spearman")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", type=str, required=True,
                   help="checkpoint folder (ours or a plain HF BERT/RoBERTa)")
    p.add_argument("--pooler", type=str, choices=pooler_names(), default=None,
                   help="sentence vector; default: the pooler saved with our checkpoints, "
                        "'cls' for plain HF checkpoints (SimCSE's default)")
    p.add_argument("--mode", type=str, choices=["dev", "test", "fasttest"], default="test",
                   help="dev: dev sets, fast classifier; test: full classifier; fasttest: fast classifier, test sets")
    p.add_argument("--task_set", type=str, choices=["sts", "transfer", "full", "cluster", "files", "na"], default="sts",
                   help="any value but 'na' overrides --tasks; cluster: the clustering probe on the built-in TREC set "
                        "(plus any --cluster_file); files: only the --sts_file and --cluster_file sets")
    p.add_argument("--tasks", type=str, nargs="+",
                   default=["STS12", "STS13", "STS14", "STS15", "STS16", "MR", "CR", "MPQA", "SUBJ",
                            "SST2", "TREC", "MRPC", "SICKRelatedness", "STSBenchmark"],
                   help="tasks to evaluate with --task_set na")
    p.add_argument("--data_dir", type=str, default="SentEval/data",
                   help="SentEval data folder holding downstream/ (or the downstream folder itself)")
    p.add_argument("--batch_size", type=int, default=128, help="encoding batch size (SentEval: 128)")
    p.add_argument("--max_seq_length", type=int, default=None,
                   help="truncate sentences to this many tokens (default: no truncation, as SimCSE)")
    p.add_argument("--output_json", type=str, default=None, help="write every number to this JSON file")
    p.add_argument("--device", type=str, default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--precision", type=str, choices=PRECISIONS, default="auto",
                   help="encoding precision: auto (bf16 on a CUDA GPU that has it, else fp16 there; fp32 on the CPU), "
                        "fp32, bf16 or fp16 (CUDA); the similarities are computed in fp32")
    p.add_argument("--korsts", action="store_true", help="also evaluate KorSTS (8 metrics)")
    p.add_argument("--korsts_dir", type=str, default=None,
                   help="KorSTS folder with sts-{dev,test}.tsv (default: <data_dir>/downstream/KorSTS)")
    p.add_argument("--korsts_per_batch", action="store_true",
                   help="also report KoDiffCSE's per-batch KorSTS protocol (shuffled batches of 256, averaged)")
    p.add_argument("--seed", type=int, default=1111, help="SentEval seed for the classifiers")
    p.add_argument("--sts_file", type=str, action="append", default=[], metavar="NAME=PATH",
                   help="any STS set (repeatable; any language): a TSV/CSV file with two sentence columns and a score "
                        "column (--sts_columns), or a local `datasets` folder (PATH[split]); cosine Spearman over the set")
    p.add_argument("--sts_columns", type=str, default=None,
                   help="the --sts_file columns: three names (header line) or 0-based indices: sentence 1, sentence 2, "
                        "score (default: sentence1,sentence2,score)")
    # The clustering probe of ClusterNS (cluster_eval.py; SentEval/senteval/clustering.py).
    p.add_argument("--cluster_file", type=str, action="append", default=[], metavar="NAME=PATH",
                   help="a label<TAB>text file for the clustering probe (repeatable; with any --task_set)")
    p.add_argument("--cluster_pooler", type=str, choices=pooler_names(), default="cls_before_pooler",
                   help="the sentence vector of the clustering probe (default: the original's last-layer [CLS], no MLP, "
                        "no prompt)")
    p.add_argument("--cluster_seed", type=int, default=0,
                   help="first k-means seed of the clustering probe (the original used none: its numbers changed per run)")
    p.add_argument("--cluster_runs", type=int, default=5,
                   help="k-means runs (seeds cluster_seed, cluster_seed+1, ...) whose mean, std, min and max are reported")
    p.add_argument("--trust_pickle", action="store_true",
                   help="allow .bin (pickle) weights, read with weights_only=True (as train.py); default: safetensors only")
    # PromptBERT checkpoints (clusterns/modeling/prompt/): the recorded template is applied automatically.
    p.add_argument("--prompt_convention", type=str, default=None, choices=list(CONVENTIONS),
                   help="prompt checkpoints: test (default: the final-test convention recorded at training, "
                        "faithfully evaluation_prompt.py's), original (period appended, no delta), "
                        "consistent/dev (the in-training selection: template ids, delta)")
    p.add_argument("--mask_embedding_sentence", action="store_true",
                   help="evaluate with a PromptBERT template (mask pooler), as evaluation_prompt.py")
    p.add_argument("--mask_embedding_sentence_template", type=str, default=None,
                   help="the template for --mask_embedding_sentence (default: the checkpoint's recorded one)")
    p.add_argument("--mask_embedding_sentence_delta", action="store_true",
                   help="with --mask_embedding_sentence: subtract the template delta at test")
    return p


def expand_tasks(args) -> list[str]:
    """The SentEval tasks to run (the clustering tasks: cluster_files)."""
    if args.task_set == "sts":
        tasks = list(STS_TASKS)
    elif args.task_set == "transfer":
        tasks = list(TRANSFER_TASKS)
    elif args.task_set == "full":
        tasks = STS_TASKS + TRANSFER_TASKS
    elif args.task_set in ("cluster", "files"):
        tasks = []
    else:
        tasks = list(args.tasks)
    if args.korsts and "KorSTS" not in tasks:
        tasks.append("KorSTS")
    return tasks


def senteval_params(args) -> dict:
    """SimCSE's params per mode (spec section 7) plus the splits that are reported."""
    params = {"task_path": args.data_dir, "usepytorch": True, "seed": args.seed,
              "batch_size": args.batch_size, "progress_bar": None,
              "eval_splits": ["dev"] if args.mode == "dev" else ["test"]}
    if args.mode in ("dev", "fasttest"):
        params["kfold"] = 5
        params["classifier"] = {"nhid": 0, "optim": "rmsprop", "batch_size": 128, "tenacity": 3, "epoch_size": 2}
    else:
        params["kfold"] = 10
        params["classifier"] = {"nhid": 0, "optim": "adam", "batch_size": 64, "tenacity": 5, "epoch_size": 4}
    if args.device:
        params["device"] = args.device
    if args.korsts_dir:
        params["korsts_path"] = args.korsts_dir
    if args.korsts_per_batch:
        params["korsts_per_batch"] = True
    return params


class CachedBatcher:
    """SentEval batcher over an encoder with a sentence -> embedding cache across STS tasks
    (STS-B and SICK reuse STS12-16 sentences), so each distinct sentence is encoded once.

    It takes any number of sentences (``batches_itself``): the harness hands it a task's distinct sentences
    at once and the encoder batches them by subword length, so batches carry almost no padding."""

    batches_itself = True

    def __init__(self, encoder, batch_size: int, max_seq_length: int | None = None, precision: str = "fp32"):
        self.encoder = encoder
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.precision = precision
        self.cache: dict[str, np.ndarray] = {}
        self.use_cache = True

    def __call__(self, params, batch):
        if batch and batch[0] and isinstance(batch[0][0], bytes):
            batch = [[w.decode("utf-8") for w in s] for s in batch]
        sentences = [" ".join(s) for s in batch]
        # A progress bar for a whole task's sentences, as the harness shows one for its own batches.
        disabled = progress_bar_disabled(params)
        show = (sys.stderr.isatty() if disabled is None else not disabled) and len(sentences) > self.batch_size
        if not self.use_cache:
            return self.encoder.encode(sentences, batch_size=self.batch_size, max_seq_length=self.max_seq_length,
                                       show_progress_bar=show, autocast_precision=self.precision)
        missing = [s for s in dict.fromkeys(sentences) if s not in self.cache]
        if missing:
            emb = self.encoder.encode(missing, batch_size=self.batch_size, max_seq_length=self.max_seq_length,
                                      show_progress_bar=show, autocast_precision=self.precision)
            self.cache.update(zip(missing, emb))
        return np.stack([self.cache[s] for s in sentences])


def evaluation_load_kwargs(
    path: str,
    mask_embedding_sentence: bool = False,
    template: str | None = None,
    delta: bool = False,
    convention: str | None = None,
) -> dict[str, Any]:
    """evaluation.py's prompt flags -> SentenceEncoder.from_pretrained keyword arguments.

    Our prompt checkpoints need none of them (the template is recorded; --prompt_convention picks
    test / original / consistent). --mask_embedding_sentence (+ --mask_embedding_sentence_template,
    --mask_embedding_sentence_delta) evaluates any checkpoint with a template as evaluation_prompt.py
    (the mask pooler replaces --pooler, as there); on one of our prompt checkpoints the template
    flag replaces the recorded template and --mask_embedding_sentence_delta turns on the test delta."""
    kwargs: dict[str, Any] = {}
    if convention is not None:
        kwargs["prompt_convention"] = check_convention(convention)
    if not mask_embedding_sentence:
        if template is not None or delta:
            raise ValueError("--mask_embedding_sentence_template / --mask_embedding_sentence_delta need --mask_embedding_sentence")
        return kwargs
    saved_config = EncoderConfig.load(path) if os.path.isdir(path) else None
    saved = saved_config.prompt if saved_config is not None else None
    if saved:
        settings = dict(saved)
        if template is not None:
            check_template_syntax(template, "--mask_embedding_sentence_template")
            settings["template"] = template
        settings["test_delta"] = bool(settings.get("test_delta")) or delta
    else:
        if template is None:
            raise ValueError(f"{path!r} records no prompt: --mask_embedding_sentence needs --mask_embedding_sentence_template")
        settings = prompt_config(template, test_delta=delta)
    kwargs.update(pooler="mask", prompt=settings)
    return kwargs


def load_encoder(args):
    pooler = args.pooler
    if pooler is None and not os.path.isfile(os.path.join(args.model_name_or_path, CONFIG_NAME)):
        pooler = "cls"  # SimCSE's default for plain HF checkpoints
    prompt_kwargs = evaluation_load_kwargs(
        args.model_name_or_path, args.mask_embedding_sentence, args.mask_embedding_sentence_template,
        args.mask_embedding_sentence_delta, args.prompt_convention,
    )
    pooler = prompt_kwargs.pop("pooler", pooler)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return SentenceEncoder.from_pretrained(args.model_name_or_path, pooler=pooler, device=device, trust_pickle=args.trust_pickle,
                                           **prompt_kwargs)


BUILTIN_CLUSTER_TASK = "TREC-cluster"


def cluster_files(args) -> dict[str, str]:
    """{task name: path} of the clustering probe: the built-in TREC set under --task_set cluster (path ""), then each
    --cluster_file NAME=PATH (the name as given)."""
    files: dict[str, str] = {BUILTIN_CLUSTER_TASK: ""} if args.task_set == "cluster" else {}
    return {**files, **sts_files.named_locations(args.cluster_file, "--cluster_file", reserved=set(files))}


def build_sts_file_evaluations(args, taken) -> dict:
    columns = sts_files.parse_columns(args.sts_columns)
    return {name: sts_files.STSFileEval(name, path, columns)
            for name, path in sts_files.named_locations(args.sts_file, "--sts_file", reserved=taken).items()}


def build_cluster_evaluations(files: dict[str, str], args) -> dict:
    seeds = range(args.cluster_seed, args.cluster_seed + args.cluster_runs)
    out = {}
    for name, path in files.items():
        if name == BUILTIN_CLUSTER_TASK and not path:
            out[name] = clustering.ClusteringEval.trec(os.path.join(resolve_downstream(args.data_dir), "TREC"), seeds=seeds)
        else:
            out[name] = clustering.ClusteringEval.from_file(name, path, seeds=seeds)
    return out


def load_cluster_encoder(args, encoder=None):
    """The clustering probe's encoder: --cluster_pooler (default the original's raw last-layer [CLS]: no MLP, and
    no prompt, which only the mask pooler applies); the other tasks' encoder where it pools so."""
    if encoder is not None and encoder.config.eval_pooler == args.cluster_pooler:
        return encoder
    if args.cluster_pooler == "mask" and args.mask_embedding_sentence:
        return load_encoder(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return SentenceEncoder.from_pretrained(args.model_name_or_path, pooler=args.cluster_pooler, device=device,
                                           trust_pickle=args.trust_pickle)


def check_ranges(args) -> None:
    """Every numeric flag's range, before any data or model is read."""
    if args.sts_columns is not None and not args.sts_file:
        raise ValueError("--sts_columns describes the --sts_file sets, but none is given; add --sts_file NAME=PATH or drop it")
    if args.task_set == "files" and not args.sts_file and not args.cluster_file:
        raise ValueError("--task_set files evaluates only --sts_file / --cluster_file sets, and none is given; add one")
    if args.cluster_runs < 1:
        raise ValueError(f"--cluster_runs must be >= 1 (k-means runs of the clustering probe), got {args.cluster_runs}")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.max_seq_length is not None and args.max_seq_length < 2:
        raise ValueError(f"--max_seq_length must leave room for a word after the special tokens (>= 2 here), got {args.max_seq_length}")


def build_evaluations(tasks: list[str], params: dict) -> dict:
    """Load (and validate) every task's data up front, so bad data fails before encoding."""
    se = SE(params, None)
    return {t: se.build(t) for t in tasks}


def run_tasks(evaluations: dict, params: dict, batcher: CachedBatcher, batchers: dict | None = None) -> dict:
    """Evaluate pre-built tasks in order (SentEval's do_prepare + run); batchers: {task: its own batcher} (the
    clustering probe's representation)."""
    se = SE(params, batcher)
    results = {}
    for task, evaluation in evaluations.items():
        if batchers and task in batchers:
            se.params.current_task = task
            results[task] = evaluation.run(se.params, batchers[task])
            continue
        # The cache only pays off for STS-style tasks; transfer sets are large.
        batcher.use_cache = task in STS_TASKS or task == "KorSTS"
        if not batcher.use_cache:
            batcher.cache.clear()
        se.params.current_task = task
        evaluation.do_prepare(se.params, se.prepare)
        results[task] = evaluation.run(se.params, batcher)
    batcher.cache.clear()
    return results


# ---- tables ------------------------------------------------------------------------------

def print_table(task_names, scores):
    tb = PrettyTable()
    tb.field_names = task_names
    tb.add_row(scores)
    print(tb)


def _avg(scores: list[str]) -> str:
    # SimCSE averages the already-rounded cell strings.
    return "%.2f" % (sum(float(s) for s in scores) / len(scores))


def build_tables(results: dict, mode: str, korsts_per_batch: bool = False) -> list[tuple[str, list, list]]:
    """[(title, headers, cells)] as SimCSE prints them (+ KorSTS tables), with the tasks that ran only: SimCSE
    printed every column, 0.00 for a task not run, and averaged those zeros in. With every task of a table run
    (--task_set sts / transfer / full) the tables are SimCSE's exactly."""
    tables = []
    if mode == "dev":
        names = [task for task in ["STSBenchmark", "SICKRelatedness"] if task in results]
        scores = ["%.2f" % (results[task]["dev"]["spearman"][0] * 100) for task in names]
        if names:
            tables.append(("sts", names, scores))
        key = "devacc"
    else:
        names, scores = [], []
        for task in STS_TASKS:
            if task not in results:
                continue
            names.append(task)
            if task.startswith("STS1"):
                scores.append("%.2f" % (results[task]["all"]["spearman"]["all"] * 100))
            else:
                scores.append("%.2f" % (results[task]["test"]["spearman"].correlation * 100))
        if names:
            tables.append(("sts", names + ["Avg."], scores + [_avg(scores)]))
        key = "acc"
    names = [task for task in TRANSFER_TABLE if task in results]
    scores = ["%.2f" % results[task][key] for task in names]
    if names:
        tables.append(("transfer", names + ["Avg."], scores + [_avg(scores)]))
    sts_sets = {task: res for task, res in results.items() if isinstance(res, dict) and set(res) == {"spearman", "pearson", "n"}}
    if sts_sets:
        tables.append(("sts_files", list(sts_sets), ["%.2f" % (res["spearman"] * 100) for res in sts_sets.values()]))
    clustered = {task: res for task, res in results.items() if isinstance(res, dict) and "nmi" in res}
    if clustered:
        cells = []
        for res in clustered.values():
            cells += ["%.2f" % (res["acc"]["mean"] * 100), "%.2f" % (res["nmi"]["mean"] * 100)]
        tables.append(("cluster", [f"{task} {m}" for task in clustered for m in ("ACC", "NMI")], cells))
    if "KorSTS" in results:
        split = "dev" if mode == "dev" else "test"
        res = results["KorSTS"][split]
        cells = ["%.2f" % (res[k] * 100) for _, k in KORSTS_COLUMNS]
        tables.append((f"korsts_{split}", [c for c, _ in KORSTS_COLUMNS] + ["Avg."], cells + [_avg(cells)]))
        if korsts_per_batch and "per_batch" in res:
            pb = res["per_batch"]
            cells = ["%.2f" % (pb[k] * 100) for _, k in KORSTS_COLUMNS]
            tables.append((f"korsts_{split}_per_batch", [c for c, _ in KORSTS_COLUMNS] + ["Avg."],
                           cells + [_avg(cells)]))
    return tables


def print_tables(tables, mode: str, results: dict | None = None) -> None:
    print("------ %s ------" % mode)
    for title, names, cells in tables:
        if title.startswith("korsts"):
            print("------ KorSTS %s ------" % title[len("korsts_"):].replace("_", " "))
        if title == "cluster":
            print_cluster_table(results or {})
            continue
        if title == "sts_files":
            print("------ STS files (cosine Spearman x100) ------")
        print_table(names, cells)


def print_cluster_table(results: dict) -> None:
    """One row per clustering task: K, sentences, ACC and NMI (x100) as mean ± std [min, max] over the k-means seeds."""
    rows = [(task, res) for task, res in results.items() if isinstance(res, dict) and "nmi" in res]
    seeds = rows[0][1]["seeds"]
    print(f"------ clustering (k-means, K = the number of labels, {len(seeds)} seeds {seeds[0]}..{seeds[-1]}) ------")
    tb = PrettyTable()
    tb.field_names = ["task", "K", "sentences", "ACC", "NMI"]

    def cell(s):
        return f"{s['mean'] * 100:.2f} ± {s['std'] * 100:.2f} [{s['min'] * 100:.2f}, {s['max'] * 100:.2f}]"

    for task, res in rows:
        tb.add_row([task, res["k"], res["n"], cell(res["acc"]), cell(res["nmi"])])
    print(tb)


# ---- JSON --------------------------------------------------------------------------------

def _num(x):
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def jsonable(obj):
    """Results -> JSON: scipy results become their coefficient (+ '<key>_pvalue'), arrays lists."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if hasattr(v, "statistic") and hasattr(v, "pvalue"):
                out[str(k)] = _num(v.statistic)
                out[f"{k}_pvalue"] = _num(v.pvalue)
            else:
                out[str(k)] = jsonable(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _num(obj)
    return obj


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s : %(message)s", level=logging.INFO)
    tasks = expand_tasks(args)
    params = senteval_params(args)
    try:
        check_ranges(args)
        clusters = cluster_files(args)
        evaluations = build_evaluations(tasks, params)
        files = build_sts_file_evaluations(args, set(evaluations) | set(clusters))
        tasks += list(files)
        evaluations.update(files)
        evaluations.update(build_cluster_evaluations(clusters, args))
        encoder = load_encoder(args) if tasks else None
        cluster_encoder = load_cluster_encoder(args, encoder) if clusters else None
        loaded = encoder or cluster_encoder
        precision = resolve_precision(args.precision, loaded.device.type, flag="--precision") if loaded is not None else "fp32"
    except (MissingDataError, DataFormatError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if precision != "fp32":
        logging.info("encoding in %s (autocast; --precision fp32 for full precision)", precision)
    batcher = CachedBatcher(encoder, args.batch_size, args.max_seq_length, precision)
    cluster_batcher = CachedBatcher(cluster_encoder, args.batch_size, args.max_seq_length, precision)
    start = time.perf_counter()
    try:
        results = run_tasks(evaluations, params, batcher, {task: cluster_batcher for task in clusters})
    except (MissingDataError, DataFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    tables = build_tables(results, args.mode, args.korsts_per_batch)
    print_tables(tables, args.mode, results)
    if args.output_json:
        payload = {
            "model_name_or_path": args.model_name_or_path, "pooler": args.pooler, "mode": args.mode,
            "task_set": args.task_set, "tasks": tasks + list(clusters), "batch_size": args.batch_size,
            **({"cluster_pooler": args.cluster_pooler, "cluster_files": {k: v or "built-in" for k, v in clusters.items()}}
               if clusters else {}),
            "max_seq_length": args.max_seq_length, "precision": precision, "senteval_version": getattr(senteval, "__version__", None),
            "seconds": elapsed,
            "tables": {title: dict(zip(names, [float(c) for c in cells])) for title, names, cells in tables},
            "results": jsonable(results),
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
        with open(args.output_json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {args.output_json}")
    return 0


def evaluate_cli() -> None:
    """`clusterns-evaluate`."""
    sys.exit(main())
