#!/usr/bin/env python
"""Make saved encoders loadable with sentence-transformers (outputs written before the export existed).

    python scripts/export_sentence_transformers.py result/my-unsup-simcse [--checkpoints]
    python scripts/export_sentence_transformers.py some-hf-bert-folder --pooler avg --tokenizer bert-base-uncased

Writes modules.json, sentence_bert_config.json, config_sentence_transformers.json and the module
folders (1_Pooling/, 2_Dense/ for the SimCSE MLP, ...) beside the weights, which are not
rewritten; then loads each folder with SentenceTransformer and checks that its vectors match
SentenceEncoder.encode (cosine >= 0.9999; --no_check to skip). Writes README.md (model card)
when the folder has training_args.json and no card. See clusterns/export/sentence_transformers.py for the layouts.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clusterns.cli.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
