#!/usr/bin/env python
"""Train a sentence encoder with a SimCSE-family objective.

    python train.py --model_name_or_path bert-base-uncased --train_file data/wiki1m_for_simcse.txt \
        --output_dir result/my-unsup-simcse --num_train_epochs 1 --per_device_train_batch_size 64 \
        --learning_rate 3e-5 --max_seq_length 32 --evaluation_strategy steps --metric_for_best_model stsb_spearman \
        --load_best_model_at_end --eval_steps 125 --pooler_type cls --mlp_only_train --temp 0.05 --do_train --do_eval

Flags follow SimCSE's train.py and the method repositories; `python train.py --help` lists them all.
"""
from clusterns.cli.train import train_cli

if __name__ == "__main__":
    train_cli()
