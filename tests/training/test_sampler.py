"""The training order (training/sampler.py): the same indices as accelerate's SeedableRandomSampler for every seed,
epoch and sample count, never one Python list of the whole corpus, and what the Trainer really iterates."""
from __future__ import annotations

import tracemalloc

import pytest
from accelerate.data_loader import BatchSamplerShard, SeedableRandomSampler
from torch.utils.data import BatchSampler, DataLoader

from clusterns.training.sampler import ChunkedSeedableRandomSampler, training_sampler, use_chunked_order


@pytest.mark.parametrize("n, num_samples", [(1, None), (10, None), (7, 20), (5, 3), (70_000, None)])
@pytest.mark.parametrize("seed", [0, 42])
def test_same_order_as_accelerates_sampler_in_every_epoch(n, num_samples, seed):
    theirs = SeedableRandomSampler(range(n), num_samples=num_samples, data_seed=seed)
    ours = ChunkedSeedableRandomSampler(range(n), num_samples=num_samples, data_seed=seed)
    for _ in range(3):  # each pass moves to the next epoch's seed
        assert list(ours) == list(theirs)
    theirs.set_epoch(7)
    ours.set_epoch(7)
    assert list(ours) == list(theirs)


def first_indices_peak_bytes(sampler_class, n: int) -> int:
    sampler = sampler_class(range(n), data_seed=1)
    tracemalloc.start()
    try:
        it = iter(sampler)
        [next(it) for _ in range(10)]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_no_python_list_of_the_whole_corpus():
    n = 2_000_000
    assert first_indices_peak_bytes(SeedableRandomSampler, n) > 30 * n  # the negative control: ~40 bytes a sentence
    assert first_indices_peak_bytes(ChunkedSeedableRandomSampler, n) < 8 * 1024 * 1024


def test_the_sampler_behind_one_or_several_processes_is_replaced():
    data = list(range(40))
    for shards in (1, 2):
        sampler = SeedableRandomSampler(data, data_seed=3)
        batches = BatchSampler(sampler, batch_size=4, drop_last=False)
        if shards > 1:
            batches = BatchSamplerShard(batches, num_processes=shards, process_index=1)
        loader = DataLoader(data, batch_sampler=batches)
        assert training_sampler(loader) is sampler
        assert use_chunked_order(loader) and type(sampler) is ChunkedSeedableRandomSampler


def test_the_trainer_iterates_the_chunked_sampler(tiny_bert, tiny_corpus, tmp_path):
    from clusterns.training.run import build_run

    run = build_run(["--model_name_or_path", str(tiny_bert), "--train_file", str(tiny_corpus), "--output_dir",
                     str(tmp_path / "run"), "--use_cpu", "--do_train", "--max_steps", "1", "--report_to", "none",
                     "--per_device_train_batch_size", "8", "--seed", "5"])
    loader = run.trainer.get_train_dataloader()
    sampler = training_sampler(loader)
    assert type(sampler) is ChunkedSeedableRandomSampler
    expected = SeedableRandomSampler(range(len(run.train_dataset)), data_seed=sampler.initial_seed)
    assert list(sampler) == list(expected)
