#!/usr/bin/env python
"""One Markdown table, in the papers' layout, from the JSON files written by evaluation.py --output_json.

    python evaluation.py --model_name_or_path result/a --task_set full --mode test --output_json result/a/eval_test.json
    python scripts/results_table.py result/a result/b other/results.json [--labels A B C] [--output table.md]

STS: Model | STS12 | STS13 | STS14 | STS15 | STS16 | STS-B | SICK-R | Avg.   (Spearman x100)
Transfer: Model | MR | CR | SUBJ | MPQA | SST | TREC | MRPC | Avg.       (accuracy)
KorSTS: Model | Avg. | Cos P | Cos S | Euc P | Euc S | Man P | Man S | Dot P | Dot S
(--mode dev files give the dev tables). A folder contributes every evaluation JSON in it (and in
eval/, results/). Avg. is shown only for complete rows ("–" marks a task that was not evaluated).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clusterns.cli.model_card import results_table_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(results_table_main())
