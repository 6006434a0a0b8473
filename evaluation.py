#!/usr/bin/env python
"""Evaluate a checkpoint on SentEval tasks and print SimCSE's tables (plus JSON).

    python evaluation.py --model_name_or_path result/my-unsup-simcse --pooler cls_before_pooler \
        --task_set sts --mode test [--output_json results.json]

The same as `clusterns-evaluate` (clusterns/cli/evaluate.py); `python evaluation.py --help` lists the flags.
"""
import sys

from clusterns.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
