"""Step timing of one configuration in this process: ours through clusterns.build_run (timed by a Trainer
callback, batches recorded by a collator wrapper), sentence-transformers' MNRL recipe through its own trainer."""
from __future__ import annotations

import statistics
import time
import resource

from bench.flops import encoder_shapes, matmul_throughput
from bench.scratch import scratch_dir


CLUSTERNS_K = 128

def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB

class _Recorder:
    """Wraps the collator: records (non-pad, padded) token counts and the padded length of every batch."""

    def __init__(self, inner, keep_last: int = 0):
        self.inner = inner
        self.stats: list[tuple[int, int, int, int]] = []  # (non-pad tokens, rows*L, rows, L)
        self.keep_last = keep_last
        self.batches: list[dict] = []
        self.seconds: list[float] = []  # collation time per batch (what DataLoader workers could hide)

    def __call__(self, features):
        t0 = time.perf_counter()
        batch = self.inner(features)
        self.seconds.append(time.perf_counter() - t0)
        mask = batch["attention_mask"]
        rows = mask.numel() // mask.shape[-1]
        self.stats.append((int(mask.sum()), int(mask.numel()), int(rows), int(mask.shape[-1])))
        if self.keep_last:
            self.batches.append(batch)
            self.batches = self.batches[-self.keep_last:]
        return batch

def _timer_callback():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[float, float]] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks = [(time.perf_counter(), time.process_time())]

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), time.process_time()))

    return StepTimer()

def _durations(marks, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return wall[warmup:warmup + steps], cpu[warmup:warmup + steps]

def _has_sampling_strategy() -> bool:
    """transformers 5 has --train_sampling_strategy; on 4.57 run_ours sets a sequential sampler itself."""
    import dataclasses

    from transformers import TrainingArguments

    return "train_sampling_strategy" in {f.name for f in dataclasses.fields(TrainingArguments)}

def _common_training_flags(a, out_dir: str) -> list[str]:
    return [
        "--output_dir", out_dir, "--overwrite_output_dir", "--use_cpu",
        "--per_device_train_batch_size", str(a.batch_size), "--max_steps", str(a.warmup + a.steps),
        "--learning_rate", str(a.learning_rate), "--seed", "42", "--logging_steps", str(getattr(a, "logging_steps", 1000000)),
        "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
        *(["--train_sampling_strategy", "sequential"] if _has_sampling_strategy() else []),
        "--dataloader_drop_last", "--dataloader_num_workers", str(a.num_workers),
        *(["--optim", a.optim] if a.optim else []), "--lr_scheduler_type", "linear", "--warmup_steps", "0", "--weight_decay", "0.0",
    ]

OURS_FLAGS = {
    "infonce": ["--objective", "infonce"],
    "infonce-pack": ["--objective", "infonce", "--packed_linear"],
    "infonce-nopack": ["--objective", "infonce", "--no_packed_linear"],
    "infonce-compile": ["--objective", "infonce", "--torch_compile"],
    "infonce-torchdropout": ["--objective", "infonce", "--no_fast_dropout"],
    "infonce-mkl": ["--objective", "infonce", "--no_fast_linear"],
    "infonce-onednncache": ["--objective", "infonce", "--onednn_primitive_cache"],
    "infonce-noprune": ["--objective", "infonce", "--prune_last_layer", "false"],
    "clusterns": ["--objective", "clusterns", "--kmeans", "{clusterns_k}", "--kmean_cosine", "1.0"],
    "clusterns-nopack": ["--objective", "clusterns", "--kmeans", "{clusterns_k}", "--kmean_cosine", "1.0", "--no_packed_linear"],
    "mixcse": ["--objective", "mixcse", "--lambdas", "0.2"],
    "mixcse-nopack": ["--objective", "mixcse", "--lambdas", "0.2", "--no_packed_linear"],
    "diffcse": ["--objective", "diffcse", "--batchnorm", "--lambda_weight", "0.005", "--masking_ratio", "0.3"],
    "diffcse-nopack": ["--objective", "diffcse", "--batchnorm", "--lambda_weight", "0.005", "--masking_ratio", "0.3",
                       "--no_packed_linear"],
    "prompt": ["--objective", "infonce", "--mask_embedding_sentence", "--mask_embedding_sentence_delta",
               "--prompt_templates", "per_backbone"],
}
# The gradient-cached variants (--mini_batch_size from bench_train.py's flag of that name)
for _name in ("infonce", "diffcse"):
    OURS_FLAGS[f"{_name}-cached"] = OURS_FLAGS[_name] + ["--mini_batch_size", "{mini_batch_size}"]

def _fix_packing_flag(flags: list[str]) -> list[str]:
    """`--no_packed_linear` only parses while the default is on, `--packed_linear` always does."""
    from clusterns.training.arguments import ModelArguments

    default = ModelArguments.__dataclass_fields__["packed_linear"].default if "packed_linear" in ModelArguments.__dataclass_fields__ else None
    out = []
    for flag in flags:
        if flag == "--no_packed_linear" and default is not True:
            if default is None:
                continue  # no switch at all: the plain forward
            out += ["--packed_linear", "false"]
            continue
        if flag == "--packed_linear" and default is None:
            raise SystemExit("error: this checkout has no --packed_linear switch")
        out.append(flag)
    return out

def tiny_generator_from_config(config, layers: int = 2, seed: int = 0):
    """A masked LM sharing the encoder's vocabulary: the encoder's config with `layers` layers, random weights."""
    import copy

    import torch
    from transformers import AutoModelForMaskedLM

    config = copy.deepcopy(config)
    config.num_hidden_layers = layers
    torch.manual_seed(seed)
    return AutoModelForMaskedLM.from_config(config)

def _init_features(run, sentences: list[str], max_seq_length: int) -> list[dict]:
    """The ClusterNS init batch, tokenised as the training data (the pooler's views function or the plain one)."""
    from datasets import Dataset

    from clusterns.training.data import tokenize_corpus

    encoder = run.encoder
    views = encoder.pooling.training_tokenize_function(encoder, max_seq_length)
    init = tokenize_corpus(Dataset.from_dict({"sent0": sentences}), encoder.tokenizer, max_seq_length, views_function=views)
    return [init[i] for i in range(len(init))]

def run_ours(name: str, a, sentences: list[str], init_sentences: list[str]) -> dict:
    """One configuration through the framework's own run builder (clusterns.build_run), timed by a callback."""
    import torch

    from clusterns.training.run import build_run

    out_dir = scratch_dir("bench_train_")
    argv = ["--model_name_or_path", a.model, "--max_seq_length", str(a.max_seq_length), "--pooler_type", "cls"]
    flags = [f.format(mini_batch_size=getattr(a, "mini_batch_size", 64), clusterns_k=getattr(a, "clusterns_k", CLUSTERNS_K))
             for f in OURS_FLAGS[name]]
    argv += _fix_packing_flag(flags) + _common_training_flags(a, out_dir)
    diffcse = "diffcse" in name
    recorders: list[_Recorder] = []

    def wrap(collator):
        recorders.append(_Recorder(collator, keep_last=a.steps if diffcse else 0))
        return recorders[-1]

    timer = _timer_callback()
    objective_kwargs = {}
    if diffcse:  # a stand-in generator (--generator_layers) sharing the encoder's vocabulary (no hub here)
        from transformers import AutoConfig, AutoTokenizer

        objective_kwargs = {"generator": tiny_generator_from_config(AutoConfig.from_pretrained(a.model),
                                                                    layers=getattr(a, "generator_layers", 2)),
                            "generator_tokenizer": AutoTokenizer.from_pretrained(a.model)}
    run = build_run(argv, sentences=sentences, objective_kwargs=objective_kwargs, wrap_collator=wrap, callbacks=[timer])
    model, objective, encoder, trainer = run.model, run.objective, run.encoder, run.trainer
    recorder = recorders[-1]
    extra = {}
    if run.model_args.objective == "clusterns":  # start the clustering on a dedicated init batch of K sentences
        batch = run.collator(_init_features(run, init_sentences, a.max_seq_length))
        model.train()
        with torch.no_grad():
            model(**batch)
        if not objective.started:
            raise SystemExit("error: ClusterNS did not start on the init batch")
        extra["clustering_started_on_init_batch"] = len(init_sentences)
    trainer.train()
    rss = peak_rss_mb()
    guard_times = trainer.update_check_seconds
    training_args = run.training_args
    if run.model_args.objective == "clusterns" and not objective.started:
        raise SystemExit("error: ClusterNS clustering was not active during the timing")
    wall, cpu = _durations(timer.marks, a.warmup, a.steps)
    stats = recorder.stats[a.warmup:a.warmup + a.steps]
    from clusterns.modeling.packing import PACKING_ATTR, is_packed

    result = {
        "config": name, "wall_per_step": wall, "cpu_per_step": cpu, "peak_rss_mb": rss,
        "tokens": [s[0] for s in stats], "padded_tokens": [s[1] for s in stats],
        "rows": [s[2] for s in stats], "lengths": [s[3] for s in stats],
        "packed_linear": bool(is_packed(encoder.backbone)), "shapes": encoder_shapes(encoder.backbone.config),
        # the last layer ran for the pooler's read tokens only (packing.reading_positions), counted in the FLOPs
        "last_layer_reads": bool(getattr(getattr(encoder.backbone, PACKING_ATTR, None), "read_position_calls", 0)),
        "optim": str(getattr(training_args.optim, "value", training_args.optim)),
        "torch_threads": torch.get_num_threads(), **extra,
        "guard_ms_per_step": 1000 * statistics.mean(guard_times[a.warmup:a.warmup + a.steps]) if guard_times[a.warmup:] else None,
        "collate_ms_per_step": 1000 * statistics.mean(recorder.seconds[a.warmup:a.warmup + a.steps]),
    }
    if name == "infonce":  # what tokenizing inside the step (as sentence-transformers does) would add to ours
        result["tokenize_ms_per_step"] = _tokenize_ms_per_step(encoder.tokenizer, sentences, a)
    if diffcse:
        result["diffcse_parts"] = _time_diffcse_parts(model, recorder.batches)
    if name.startswith("infonce") and a.matmul:
        tokens = statistics.mean(result["tokens"] if result["packed_linear"] else result["padded_tokens"])
        result["matmul"] = matmul_throughput(result["shapes"], int(tokens))
    return result

def _time_diffcse_parts(model, batches: list[dict]) -> dict:
    """Generator forward (no grad) and discriminator forward+backward (with the RTD head) on the measured batches."""
    import torch

    from clusterns.objectives.diffcse.objective import rtd_inputs, rtd_loss

    objective = model.objective
    model.train()
    gen_t, disc_t = [], []
    for batch in batches:
        ids = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1])
        attn = batch["attention_mask"].reshape(ids.shape)
        mlm = batch["mlm_input_ids"].reshape(ids.shape)
        t0 = time.perf_counter()
        g = objective.corrupt(mlm, attn)
        gen_t.append(time.perf_counter() - t0)
        disc_ids, replaced = rtd_inputs(g, ids, attn, objective.cls_token_id)
        cond = torch.randn(ids.shape[0], objective.hidden_size, requires_grad=True)
        t0 = time.perf_counter()
        hidden = objective.discriminator(disc_ids, attn, cond)
        loss = rtd_loss(objective.rtd_head(hidden).float(), replaced, attn, objective.args.rtd_reduction)
        loss.backward()
        disc_t.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    from clusterns.modeling.packing import is_packed

    gen_layers = objective.generator.config.num_hidden_layers
    return {"generator_fwd_s": statistics.mean(gen_t), "discriminator_fwd_bwd_s": statistics.mean(disc_t), "generator_layers": gen_layers,
            "generator_vocab": int(objective.generator.config.vocab_size),
            "generator_packed": objective.packed_generator_head is not None,
            "discriminator_packed": is_packed(objective.discriminator.backbone)}

def _tokenize_ms_per_step(tokenizer, sentences: list[str], a) -> float:
    """Mean time to tokenize each measured step's sentences as our tokenize function does (once: both views are the
    same sentence), then collate them: ours with tokenization moved into the step, as sentence-transformers runs."""
    from clusterns.training.data import ContrastiveCollator, tokenize_function

    function = tokenize_function(tokenizer, a.max_seq_length)
    collate = ContrastiveCollator(pad_token_id=tokenizer.pad_token_id)
    seconds = []
    for step in range(a.warmup, a.warmup + a.steps):
        batch = sentences[step * a.batch_size:(step + 1) * a.batch_size]
        t0 = time.perf_counter()
        ids = function({"sent0": batch})["sent0_ids"]
        collate([{"sent0_ids": x} for x in ids])
        seconds.append(time.perf_counter() - t0)
    return 1000 * statistics.mean(seconds)


class _TimedCollator:
    """sentence-transformers' data collator (it tokenizes the anchors and the positives), timed per call."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, []

    def __call__(self, features):
        t0 = time.perf_counter()
        out = self.inner(features)
        self.seconds.append(time.perf_counter() - t0)
        return out

    def __getattr__(self, name: str):  # the trainer reads the collator's own attributes (valid_label_columns, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def run_sentence_transformers(a, sentences: list[str]) -> dict:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from torch.utils.data import BatchSampler, SequentialSampler
    from transformers import set_seed

    def sequential_batches(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        return BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last)

    set_seed(42)
    model = SentenceTransformer(a.model, device="cpu")
    model.max_seq_length = a.max_seq_length
    loss = MultipleNegativesRankingLoss(model)  # scale 20 = 1 / temperature 0.05, in-batch negatives
    dataset = Dataset.from_dict({"anchor": sentences, "positive": sentences})
    out_dir = scratch_dir("bench_train_st_")
    args = SentenceTransformerTrainingArguments(
        output_dir=out_dir, use_cpu=True, per_device_train_batch_size=a.batch_size, max_steps=a.warmup + a.steps,
        learning_rate=a.learning_rate, seed=42, logging_steps=1000000, save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_drop_last=True, dataloader_num_workers=a.num_workers,
        **({"optim": a.optim} if a.optim else {}), lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, batch_sampler=sequential_batches,
    )
    timer = _timer_callback()
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[timer])
    collator = trainer.data_collator = _TimedCollator(trainer.data_collator)
    trainer.train()
    rss = peak_rss_mb()
    wall, cpu = _durations(timer.marks, a.warmup, a.steps)
    tok = model.tokenizer
    lengths = [len(x) for x in tok(sentences, truncation=True, max_length=a.max_seq_length)["input_ids"]]
    tokens, padded, maxlen = [], [], []
    for step in range(a.warmup, a.warmup + a.steps):
        chunk = lengths[step * a.batch_size:(step + 1) * a.batch_size]
        tokens.append(2 * sum(chunk))
        padded.append(2 * len(chunk) * max(chunk))
        maxlen.append(max(chunk))
    backbone = model[0].auto_model
    return {"config": "st", "wall_per_step": wall, "cpu_per_step": cpu, "peak_rss_mb": rss, "tokens": tokens,
            "padded_tokens": padded, "rows": [2 * a.batch_size] * len(tokens), "lengths": maxlen, "packed_linear": False,
            "shapes": encoder_shapes(backbone.config), "torch_threads": torch.get_num_threads(),
            "optim": str(getattr(args.optim, "value", args.optim)),
            "collate_ms_per_step": 1000 * statistics.mean(collator.seconds[a.warmup:a.warmup + a.steps]),
            "sentence_transformers": __import__("sentence_transformers").__version__}
