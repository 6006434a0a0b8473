"""`clusterns-model-card` (refresh a folder's model card) and `clusterns-results-table` / scripts/results_table.py."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from clusterns.export.model_card import write_model_card
from clusterns.export.results import labelled_payloads, results_markdown


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


def results_table_main(argv: list[str] | None = None) -> int:
    """scripts/results_table.py (and `clusterns-results-table`)."""
    parser = argparse.ArgumentParser(
        description="Collect evaluation.py --output_json files into Markdown tables in the papers' layout "
                    "(STS12-16, STS-B, SICK-R, Avg.; MR CR SUBJ MPQA SST TREC MRPC Avg.; KorSTS 8 metrics).")
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_JSON",
                        help="evaluation JSON files, or run folders holding them (*.json, eval/*.json, results/*.json)")
    parser.add_argument("--labels", nargs="+", default=None, help="row names, one per JSON file found (default: model folder name + pooler)")
    parser.add_argument("--output", default=None, help="also write the Markdown to this file")
    args = parser.parse_args(argv)
    try:
        entries = labelled_payloads(args.paths, args.labels)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = results_markdown(entries)
    if not text:
        print("error: the JSON files hold no STS, transfer or KorSTS results", file=sys.stderr)
        return 2
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
