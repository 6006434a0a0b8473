"""`clusterns-model-card` (refresh a folder's model card) and `clusterns-results-table` / scripts/results_table.py."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from clusterns.export.model_card import write_model_card
from clusterns.export.results import aggregate_rows, labelled_payloads, results_markdown
from clusterns.export.seeds import SUMMARY_JSON, parse_published, summarise_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or refresh) the model card README.md of a training output folder.")
    parser.add_argument("output_dir", help="the folder written by train.py")
    parser.add_argument("--eval_json", nargs="+", default=None,
                        help="evaluation.py --output_json files to include (default: the evaluation JSON files in the folder)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.output_dir):
        print(f"error: {args.output_dir!r} is not a folder", file=sys.stderr)
        return 2
    metrics = None
    results = os.path.join(args.output_dir, "eval_results.txt")
    if os.path.isfile(results):
        metrics = {}
        for line in open(results):
            key, _, value = line.partition(" = ")
            try:
                metrics[key.strip()] = float(value)
            except ValueError:
                continue
    try:
        path = write_model_card(args.output_dir, None, metrics, args.eval_json)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def split_summaries(paths: list[str]) -> tuple[list[tuple[str, dict]], list[str]]:
    """(the multi-seed summaries among paths, as (label, summary tables), the other paths): a summary.json file, or a
    folder holding one (a recipe's OUTPUT_DIR with SEEDS=)."""
    summaries, others = [], []
    for path in paths:
        file = os.path.join(path, SUMMARY_JSON) if os.path.isdir(path) else path
        if os.path.basename(file) == SUMMARY_JSON and os.path.isfile(file):
            with open(file) as f:
                summary = json.load(f)
            if not isinstance(summary.get("tables"), dict):
                raise ValueError(f"{file} is not a multi-seed summary (no tables)")
            label = summary.get("config") or os.path.basename(os.path.dirname(os.path.abspath(file)))
            summaries.append((label, summary["tables"]))
        else:
            others.append(path)
    return summaries, others


def results_table_main(argv: list[str] | None = None) -> int:
    """scripts/results_table.py (and `clusterns-results-table`)."""
    parser = argparse.ArgumentParser(
        description="Collect evaluation.py --output_json files into Markdown tables in the papers' layout "
                    "(STS12-16, STS-B, SICK-R, Avg.; MR CR SUBJ MPQA SST TREC MRPC Avg.; KorSTS 8 metrics).")
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_JSON",
                        help="evaluation JSON files, or run folders holding them (*.json, eval/*.json, results/*.json)")
    parser.add_argument("--labels", nargs="+", default=None, help="row names, one per JSON file found (default: model folder name + pooler)")
    parser.add_argument("--output", default=None, help="also write the Markdown to this file")
    parser.add_argument("--aggregate", default=None, metavar="LABEL",
                        help="the given runs are seeds of one configuration: one row of mean ± std per cell, named LABEL")
    parser.add_argument("--published", default=None,
                        help='with --aggregate: the published figures, "STS12=68.40,...,Avg.=76.25" (a published row and '
                             "the difference row)")
    args = parser.parse_args(argv)
    try:
        summaries, runs = split_summaries(args.paths)
        aggregates = [aggregate_rows(label, tables) for label, tables in summaries]
        if args.published is not None and args.aggregate is None:
            raise ValueError("--published goes with --aggregate (the figures the runs' mean is compared with)")
        if args.aggregate is not None:
            if not runs:
                raise ValueError("--aggregate needs evaluation JSON files or run folders")
            payloads = {f"run {i}": payload for i, (_, payload) in enumerate(labelled_payloads(runs))}
            aggregates.append(aggregate_rows(args.aggregate, summarise_tables(payloads, parse_published(args.published))))
            entries = []
        else:
            entries = labelled_payloads(runs, args.labels) if runs else []
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = results_markdown(entries, aggregates=aggregates)
    if not text:
        print("error: the JSON files hold no STS, transfer or KorSTS results", file=sys.stderr)
        return 2
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
