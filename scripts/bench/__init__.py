"""scripts/bench_train.py by responsibility: sentences, steps (timing), flops, harness, memory, report."""
