"""`python -m clusterns.cli.seed_summary OUTPUT_DIR --seeds "42 1 2"`: the mean, spread and published difference of
the seeds' runs in OUTPUT_DIR/seed-S/ (export/seeds.py), written to OUTPUT_DIR/summary.json and summary.md and
printed. Exit code 1 when a seed failed (the summary is still written), 2 for bad arguments."""
from __future__ import annotations

import argparse
import os
import sys

from clusterns.export.seeds import SUMMARY_JSON, SUMMARY_MD, parse_published, summary_markdown, write_seed_summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir", help="the folder holding seed-S/ (one per seed)")
    p.add_argument("--seeds", required=True, help='the seeds, space- or comma-separated ("42 1 2 3 4")')
    p.add_argument("--published", default=None, help='published figures, "STS12=68.40,...,Avg.=76.25"')
    p.add_argument("--source", default=None, help="where the published figures come from (paper, table)")
    p.add_argument("--config", default=None, help="the configuration's name (the summary's title)")
    args = p.parse_args(argv)
    seeds = [s for s in args.seeds.replace(",", " ").split() if s]
    if not seeds:
        print("error: --seeds names no seed", file=sys.stderr)
        return 2
    if not os.path.isdir(args.output_dir):
        print(f"error: {args.output_dir} is not a folder (the recipe's OUTPUT_DIR holding seed-S/)", file=sys.stderr)
        return 2
    try:
        published = parse_published(args.published)
    except ValueError as err:
        print(f"error: --published: {err}", file=sys.stderr)
        return 2
    summary = write_seed_summary(args.output_dir, seeds, published, args.source, args.config)
    print(summary_markdown(summary))
    print(f"wrote {os.path.join(args.output_dir, SUMMARY_JSON)} and {SUMMARY_MD}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
