"""DDP equals one process on the global batch, through the real training path (train_main = train.py).

`torchrun --standalone --nproc_per_node 2` (gloo, CPU) runs this file as a script: each rank trains with
--per_device_train_batch_size 4; the reference is one process with batch 8 on the same data, in the pytest
process. Both sides are deterministic: --dropout_prob 0, DiffCSE with the content-keyed KoDiffCSE masking
(the same masks whatever batch a sentence lands in), argmax replacements and the generator in eval mode.

Why the global batches are identical, in the same row order: the Trainer's sampler is seeded (the same
permutation in both runs) and accelerate shards it by *batches*: rank r takes per-device batch r of every
group of W consecutive batches, so the gathered batch (rank order) is exactly the next 8 indices of the
permutation, i.e. the single-process batch, row for row. That order matters for MixCSE (mixtures roll over
the global batch) and ClusterNS (the greedy-chain start index); the test also asserts it from the recorded
input ids. Every sentence has the same token length, so dynamic padding is the same on both sides (DiffCSE's
RTD mean over all positions counts the pads).

Checked per objective (infonce, clusterns after its clustering started, mixcse, diffcse): the loss at every
step (for DiffCSE: the contrastive part on every rank, the RTD part as the mean over ranks), and the parameter
update after the steps (SGD, no clipping, constant LR: the update is lr x gradient, so a gradient scaled by W
or 1/W would show; AdamW would hide it). A fifth run checks evaluation under DDP: only rank 0 runs the dev
evaluator, every rank takes the same best-checkpoint and early-stopping decisions and ends with the same
weights (the best checkpoint's). Resume under DDP: ClusterNS stopped after step 2 and resumed from its
checkpoint ends on the uninterrupted run's weights and centroids, on both ranks.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from clusterns.training.host_syncs import CountHostSyncsCallback  # noqa: E402

WORLD = 2
LOCAL_BATCH = 4
LR = 0.1
# A word list of whole-word tokens of the tiny vocabulary (each word = one token).
VOCAB_WORDS = (
    "man woman dog cat child guitar piano ball horse bike car red blue green white black small big young old "
    "sitting standing walking talking cutting slicing onion tomato potato dancing singing song music sky cloud "
    "train bus plane flying swimming jumping kid girl boy person outside inside near under over table chair book"
).split()

def with_assets(flags: list, assets: dict) -> list:
    """The objective's flags with the tiny generator's folder filled in (DiffCSE only: other objectives refuse it)."""
    return [str(assets["generator"]) if f == "{generator}" else f for f in flags]


OBJECTIVE_FLAGS = {
    "infonce": ["--objective", "infonce", "--max_steps", "2"],
    # --kmean_cosine 1.0: the clustering starts at forward 1 (that step is plain InfoNCE); forwards 2 and 3 use
    # the centroid hard negatives and the BML.
    "clusterns": ["--objective", "clusterns", "--kmeans", "4", "--kmean_cosine", "1.0", "--kmeans_lr", "0.1",
                  "--bml_weight", "0.1", "--max_steps", "3"],
    "mixcse": ["--objective", "mixcse", "--lambdas", "0.2", "--max_steps", "2"],
    # lambda 1: the RTD gradient (a rank-local term) weighs as much as the contrastive one.
    "diffcse": ["--objective", "diffcse", "--generator_name", "{generator}", "--masking_scheme", "kodiffcse", "--masking_ratio", "0.3",
                "--no_generator_dropout", "--lambda_weight", "1.0", "--max_steps", "2"],
}


# ---------------------------------------------------------------------------------------------
# The driver: one training run, recording what the comparison needs (runs in each torchrun rank
# and, for the reference, in the pytest process).
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def recording():
    from clusterns.training import trainer as T

    record: dict = {"loss": [], "logs": [], "ids": [], "initial": None, "trainer": None, "eval_calls": 0}
    original_init, original_loss = T.ContrastiveTrainer.__init__, T.ContrastiveTrainer.compute_loss

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        record["trainer"] = self
        record["host_syncs"] = CountHostSyncsCallback()  # per optimizer step (saved as its counts)
        self.add_callback(record["host_syncs"])
        if self.eval_dataset is not None:
            evaluator = self.eval_dataset

            class Counted(type(evaluator)):  # the same dev evaluator, counting its calls
                def __call__(self, *a, **k):
                    record["eval_calls"] += 1
                    return super().__call__(*a, **k)

            evaluator.__class__ = Counted

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if record["initial"] is None:
            record["initial"] = {k: v.detach().clone() for k, v in self.contrastive_model.state_dict().items()}
        record["ids"].append(inputs["input_ids"].detach().cpu().clone())
        loss, outputs = original_loss(self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        with record["host_syncs"].counter.pause():  # the recorder's own reads are not the step's
            record["loss"].append(float(outputs["loss"].detach()))
            record["logs"].append({k: float(v) for k, v in outputs["logs"].items()})
        return (loss, outputs) if return_outputs else loss

    T.ContrastiveTrainer.__init__, T.ContrastiveTrainer.compute_loss = init, compute_loss
    try:
        yield record
    finally:
        T.ContrastiveTrainer.__init__, T.ContrastiveTrainer.compute_loss = original_init, original_loss


def run_recorded(argv: list[str]) -> dict:
    from clusterns.cli.train import train_main

    with recording() as record:
        train_main([str(a) for a in argv])
    trainer = record.pop("trainer")
    counter = record.pop("host_syncs")
    record["host_syncs"], record["host_sync_counts"] = counter.per_step, dict(counter.counter.counts)
    record["host_sync_where"] = [w for _, w in counter.counter.where[:4]]
    state = trainer.state
    record["final"] = {k: v.detach().clone() for k, v in trainer.contrastive_model.state_dict().items()}
    record["global_step"] = state.global_step
    record["best_metric"] = state.best_metric
    record["best_model_checkpoint"] = state.best_model_checkpoint
    record["evals"] = [h for h in state.log_history if "eval_stsb_spearman" in h]
    record["logged_loss"] = [h["loss"] for h in state.log_history if "loss" in h]
    return record


def run_under_torchrun(spec: list[dict], root: Path, timeout: int = 900) -> None:
    """Writes spec (runs of {"argv", "out"}) to root/spec.json and runs it on WORLD gloo ranks (this file's driver)."""
    spec_file = root / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
               str(Path(__file__).resolve()), str(spec_file)]
    start = time.time()
    proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({time.time() - start:.0f} s):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"


def rank_records(out: Path) -> list[dict]:
    """What driver_main saved for each rank of one run."""
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def driver_main(spec_file: str, run_one=None) -> None:
    """torchrun entry point: every run of the spec, on this rank; results in <out>/rank<r>.pt. run_one(run) -> record
    (default: run_recorded(run["argv"]); test_multinode.py adds its own around it)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    for run in json.loads(Path(spec_file).read_text()):
        record = run_one(run) if run_one is not None else run_recorded(run["argv"])
        torch.save(record, Path(run["out"]) / f"rank{rank}.pt")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# pytest side
# ---------------------------------------------------------------------------------------------
if __name__ != "__main__":
    import pytest

    pytestmark = pytest.mark.multiprocess

    @pytest.fixture(scope="module")
    def assets(tmp_path_factory):
        return build_assets(tmp_path_factory)

    def build_assets(tmp_path_factory):
        """A tiny BERT with diverse embeddings (init std 0.2, no dropout), its 1-layer MLM generator, and a corpus
        of 48 sentences of exactly 6 one-token words."""
        import random

        from transformers import AutoModelForMaskedLM, BertConfig, BertModel, BertTokenizerFast

        from conftest import _write_wordpiece_vocab

        root = tmp_path_factory.mktemp("ddp-assets")
        model = root / "bert"
        model.mkdir()
        _write_wordpiece_vocab(model / "vocab.txt")
        tok = BertTokenizerFast.from_pretrained(str(model), do_lower_case=True)
        tok.model_max_length = 64
        tok.save_pretrained(model)
        config = BertConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2,
        )
        torch.manual_seed(0)
        BertModel(config).save_pretrained(model)
        generator = root / "generator"
        gen_config = BertConfig(**{**config.to_dict(), "num_hidden_layers": 1})
        torch.manual_seed(1)
        AutoModelForMaskedLM.from_config(gen_config).save_pretrained(generator)
        tok.save_pretrained(generator)
        rng = random.Random(0)
        lines = [" ".join(rng.sample(VOCAB_WORDS, 6)) for _ in range(48)]
        assert all(len(tok(line)["input_ids"]) == 8 for line in lines)  # [CLS] + 6 + [SEP]: no padding anywhere
        corpus = root / "corpus.txt"
        corpus.write_text("\n".join(lines) + "\n")
        varied = root / "corpus-varied.txt"  # 3 to 12 words: every batch is padded, differently on each rank
        varied.write_text("\n".join(" ".join(rng.sample(VOCAB_WORDS, rng.randint(3, 12))) for _ in range(48)) + "\n")
        return {"model": model, "generator": generator, "corpus": corpus, "corpus_varied": varied}

    def common_argv(assets, out: Path, batch: int, ddp: bool = False) -> list[str]:
        return [*(["--ddp_backend", "gloo"] if ddp else []),
            "--model_name_or_path", assets["model"],
            "--train_file", assets["corpus"], "--output_dir", out, "--overwrite_output_dir",
            "--per_device_train_batch_size", batch, "--use_cpu", "--report_to", "none",
            "--dropout_prob", "0", "--pooler_type", "cls", "--max_seq_length", "16", "--seed", "42",
            "--optim", "sgd", "--learning_rate", LR, "--lr_scheduler_type", "constant", "--max_grad_norm", "0",
            "--weight_decay", "0", "--logging_steps", "1", "--disable_tqdm", "true", "--dataloader_num_workers", "0",
        ]

    def eval_argv(assets, sts_dir, out: Path) -> list[str]:
        return [*common_argv(assets, out, LOCAL_BATCH, ddp=True), "--objective", "infonce", "--max_steps", "4",
                "--eval_strategy", "steps", "--eval_steps", "1", "--eval_data_dir", sts_dir,
                "--metric_for_best_model", "stsb_spearman", "--load_best_model_at_end", "--early_stop", "2"]

    # The published DiffCSE recipe's settings (scripts/run_diffcse.sh): BatchNorm projector, BERT 80/10/10 masking,
    # generator dropout on, lambda 0.005, padded batches of varied lengths. Not equal to one process by design
    # (per-rank BatchNorm statistics, padding and mask draws); checked for what DDP must still give.
    DIFFCSE_RECIPE_FLAGS = ["--objective", "diffcse", "--generator_name", "{generator}", "--batchnorm", "--masking_scheme", "bert",
                            "--masking_ratio", "0.3", "--lambda_weight", "0.005", "--mlp_only_train", "--max_steps", "3"]

    def diffcse_recipe_argv(assets, out: Path) -> list:
        argv = [*common_argv(assets, out, LOCAL_BATCH, ddp=True), *with_assets(DIFFCSE_RECIPE_FLAGS, assets)]
        argv[argv.index("--train_file") + 1] = assets["corpus_varied"]
        return argv

    RESUME_FLAGS = ["--objective", "clusterns", "--kmeans", "4", "--kmean_cosine", "1.0", "--kmeans_lr", "0.1",
                    "--bml_weight", "0.1", "--save_strategy", "steps", "--save_steps", "2"]

    def resume_argvs(assets, root: Path) -> dict[str, list]:
        """ClusterNS (its centroids live in the checkpoint) for 4 steps, and the same run stopped after 2 and resumed."""
        common = [*common_argv(assets, root / "resume-straight" / "run", LOCAL_BATCH, ddp=True), *RESUME_FLAGS]
        split = [*common_argv(assets, root / "resume-split" / "run", LOCAL_BATCH, ddp=True), *RESUME_FLAGS]
        return {
            "resume-straight": [*common, "--max_steps", "4"],
            "resume-first": [*split, "--max_steps", "2"],
            "resume-rest": [*split, "--max_steps", "4", "--resume_from_checkpoint", root / "resume-split" / "run" / "checkpoint-2"],
        }

    @pytest.fixture(scope="module")
    def ddp_runs(assets, tiny_sts_dir, tmp_path_factory):
        """One torchrun launch (2 gloo ranks) for the four objectives and the evaluation run."""
        root = tmp_path_factory.mktemp("ddp-runs")
        spec, outs = [], {}
        for name, flags in OBJECTIVE_FLAGS.items():
            out = root / name
            out.mkdir()
            spec.append({"argv": [str(a) for a in [*common_argv(assets, out / "run", LOCAL_BATCH, ddp=True), *with_assets(flags, assets)]], "out": str(out)})
            outs[name] = out
        out = root / "eval"
        out.mkdir()
        spec.append({"argv": [str(a) for a in eval_argv(assets, tiny_sts_dir, out / "run")], "out": str(out)})
        outs["eval"] = out
        out = root / "ddp-gradient-original"  # the originals' unscaled local gradient
        out.mkdir()
        spec.append({"argv": [str(a) for a in [*common_argv(assets, out / "run", LOCAL_BATCH, ddp=True), *OBJECTIVE_FLAGS["infonce"],
                                                 "--max_steps", "1", "--ddp_gradient", "original"]], "out": str(out)})
        outs["ddp-gradient-original"] = out
        out = root / "infonce-deferred"  # the non-finite verdicts read at logging steps: no host sync per step
        out.mkdir()
        spec.append({"argv": [str(a) for a in [*common_argv(assets, out / "run", LOCAL_BATCH, ddp=True), *OBJECTIVE_FLAGS["infonce"],
                                                 "--max_steps", "3", "--nan_check", "deferred", "--optim", "adamw_torch_fused"]], "out": str(out)})
        outs["infonce-deferred"] = out
        out = root / "diffcse-recipe"
        out.mkdir()
        spec.append({"argv": [str(a) for a in diffcse_recipe_argv(assets, out / "run")], "out": str(out)})
        outs["diffcse-recipe"] = out
        # Resume under DDP (the driver runs the spec in order): 4 steps straight, then 2 steps + resume to 4.
        for name, argv in resume_argvs(assets, root).items():
            out = root / name
            out.mkdir(exist_ok=True)
            spec.append({"argv": [str(a) for a in argv], "out": str(out)})
            outs[name] = out
        run_under_torchrun(spec, root, timeout=600)
        return {name: rank_records(out) for name, out in outs.items()}

    def float_items(state: dict) -> dict:
        return {k: v.double() for k, v in state.items() if v.is_floating_point()}

    def assert_same_update(ranks: list[dict], single: dict, name: str) -> None:
        """Initial weights identical everywhere; the update (final - initial) of every float tensor equal to the
        single-process one, on every rank."""
        init1, final1 = float_items(single["initial"]), float_items(single["final"])
        deltas = {key: final1[key] - init1[key] for key in init1}
        # Tolerance relative to the largest update: some updates are float noise around an exact 0 (e.g. the
        # attention key bias, to which the softmax is invariant).
        moved = max(float(d.abs().max()) for d in deltas.values() if d.numel())
        assert moved > 1e-3, f"{name}: the parameters did not move; the comparison would be vacuous"
        for r, rec in enumerate(ranks):
            init_r, final_r = float_items(rec["initial"]), float_items(rec["final"])
            assert init_r.keys() == init1.keys(), name
            for key in init1:
                torch.testing.assert_close(init_r[key], init1[key], rtol=0, atol=0, msg=f"{name}: initial {key} differs")
                # (the update is read off float32 weights: it cannot be resolved below their rounding step)
                resolution = 2 * torch.finfo(torch.float32).eps * float(init1[key].abs().max())
                torch.testing.assert_close(final_r[key] - init_r[key], deltas[key], rtol=1e-3, atol=max(1e-5 * moved, resolution),
                                           msg=f"{name}: rank {r} update of {key} differs from one process")

    @pytest.mark.parametrize("name", list(OBJECTIVE_FLAGS))
    def test_two_ranks_equal_one_process(name, assets, ddp_runs, tmp_path):
        ranks = ddp_runs[name]
        single = run_recorded([*common_argv(assets, tmp_path / "single", WORLD * LOCAL_BATCH), *with_assets(OBJECTIVE_FLAGS[name], assets)])
        steps = len(single["loss"])
        assert all(len(rec["loss"]) == steps for rec in ranks)
        # The gathered batch (rank order) is the single-process batch, row for row.
        for step in range(steps):
            torch.testing.assert_close(torch.cat([rec["ids"][step] for rec in ranks]), single["ids"][step], rtol=0, atol=0)
        if name == "diffcse":
            # Contrastive part: global (equal on every rank); RTD: a per-rank mean whose average is the global mean.
            for step in range(steps):
                for rec in ranks:
                    assert rec["logs"][step]["contrastive/loss"] == pytest.approx(single["logs"][step]["contrastive/loss"], rel=1e-5)
                rtd = sum(rec["logs"][step]["rtd/loss"] for rec in ranks) / WORLD
                assert rtd == pytest.approx(single["logs"][step]["rtd/loss"], rel=1e-5)
                loss = sum(rec["loss"][step] for rec in ranks) / WORLD
                assert loss == pytest.approx(single["loss"][step], rel=1e-5)
        else:
            for step in range(steps):
                for rec in ranks:
                    assert rec["loss"][step] == pytest.approx(single["loss"][step], rel=1e-5), f"step {step + 1}"
        # The logged training loss (averaged over ranks by the Trainer) is the true loss, not W times it.
        for rec in ranks:
            assert rec["logged_loss"] == pytest.approx(single["logged_loss"], rel=1e-4)
        if name == "clusterns":
            for rec in [*ranks, single]:
                assert [log["cluster/active"] for log in rec["logs"]] == [0.0, 1.0, 1.0]
            for rec in ranks:
                torch.testing.assert_close(rec["final"]["objective.cluster.centroids"], single["final"]["objective.cluster.centroids"],
                                           rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(ranks[0]["final"]["objective.cluster.centroids"], ranks[1]["final"]["objective.cluster.centroids"],
                                       rtol=0, atol=0)
        assert_same_update(ranks, single, name)
        # DDP keeps the ranks' weights identical.
        for key, value in float_items(ranks[0]["final"]).items():
            torch.testing.assert_close(float_items(ranks[1]["final"])[key], value, rtol=0, atol=0)

    @pytest.mark.skipif(int(__import__("transformers").__version__.split(".")[0]) < 5,
                        reason="the sync-free step is transformers 5's (4.x syncs in its own mask preparation)")
    def test_no_host_sync_per_step_under_ddp(ddp_runs):
        """The gathers skip their size exchange (equal batches on every rank) and the packing index comes from the
        collator: the per-step host syncs are the non-finite verdict's alone (one, every_step: the CPU's default),
        none with --nan_check deferred."""
        for name in ("infonce", "mixcse"):
            for rank in ddp_runs[name]:
                assert rank["host_syncs"] and all(n == 1 for n in rank["host_syncs"]), (name, rank["host_syncs"], rank["host_sync_counts"], rank["host_sync_where"])
        for rank in ddp_runs["infonce-deferred"]:
            assert len(rank["host_syncs"]) == 3 and all(n == 0 for n in rank["host_syncs"]), rank["host_sync_counts"]
            assert rank["global_step"] == 3 and all(math.isfinite(x) for x in rank["logged_loss"])

    def test_ddp_gradient_original_is_one_over_world_size(assets, ddp_runs, tmp_path):
        """--ddp_gradient original (SimCSE's gather, no world-size factor): the first update of every parameter is
        1/W of the one-process update on the global batch (SGD, constant LR: the update is lr x gradient); the
        loss of that first step is the same."""
        ranks = ddp_runs["ddp-gradient-original"]
        argv = [*common_argv(assets, tmp_path / "single", WORLD * LOCAL_BATCH), *OBJECTIVE_FLAGS["infonce"], "--max_steps", "1"]
        single = run_recorded(argv)
        for rec in ranks:
            assert rec["loss"][0] == pytest.approx(single["loss"][0], rel=1e-5)
        init, final = float_items(single["initial"]), float_items(single["final"])
        ratios = {}
        for key in init:
            delta = final[key] - init[key]
            if delta.abs().max() > 1e-4:  # (some updates are float noise around an exact 0)
                for rec in ranks:
                    torch.testing.assert_close(float_items(rec["final"])[key] - init[key], delta / WORLD, rtol=1e-3, atol=1e-7)
                ratios[key] = float((float_items(ranks[0]["final"])[key] - init[key]).norm() / delta.norm())
        assert len(ratios) > 5
        print(f"--ddp_gradient original, 2 ranks: update / one-process update = {min(ratios.values()):.4f}..{max(ratios.values()):.4f}")

    def test_diffcse_published_recipe_under_ddp(ddp_runs):
        """The published recipe's settings under 2 ranks, with the semantics the README documents: each rank pads
        its own rows and its RTD loss is its own (different on the two ranks), the contrastive loss is global (equal
        on both), every weight stays identical on both ranks (DDP averages the gradients), and training moves the
        weights. The BatchNorm projector normalises each rank's own rows; its running statistics are rank 0's at the
        start of every forward (DDP broadcasts buffers), so after a step each rank holds its own update of them
        (only rank 0's are saved; with --mlp_only_train they are not used at evaluation)."""
        r0, r1 = ddp_runs["diffcse-recipe"]
        assert len(r0["loss"]) == len(r1["loss"]) == 3
        widths = [(a.shape[-1], b.shape[-1]) for a, b in zip(r0["ids"], r1["ids"])]
        assert any(w0 != w1 for w0, w1 in widths), f"the ranks' batches should be padded differently: {widths}"
        for a, b in zip(r0["logs"], r1["logs"]):
            assert a["contrastive/loss"] == pytest.approx(b["contrastive/loss"], rel=1e-5)
            assert a["rtd/loss"] != b["rtd/loss"] and all(map(math.isfinite, (a["rtd/loss"], b["rtd/loss"])))
        f0, f1 = r0["final"], r1["final"]
        assert any("running_mean" in k for k in f0), "the BN projector's statistics must be in the state"
        for key, value in f0.items():
            if key.endswith(("running_mean", "running_var")):
                assert not torch.equal(f1[key], value)  # each rank's last update of rank 0's statistics
                continue
            torch.testing.assert_close(f1[key], value, rtol=0, atol=0, msg=f"{key} differs between the ranks")
        moved = max(float((f0[k].double() - r0["initial"][k].double()).abs().max()) for k in f0 if f0[k].is_floating_point())
        assert moved > 1e-6

    def test_resume_under_ddp_continues_exactly(ddp_runs):
        """2 ranks: stopping after step 2 and resuming from checkpoint-2 ends on the weights and centroids of the
        uninterrupted run, on both ranks; the resumed run trains steps 3-4 only, with clustering active."""
        straight, first, rest = ddp_runs["resume-straight"], ddp_runs["resume-first"], ddp_runs["resume-rest"]
        assert [len(r["loss"]) for r in straight] == [4, 4] and [len(r["loss"]) for r in first] == [2, 2]
        assert [len(r["loss"]) for r in rest] == [2, 2] and all(r["global_step"] == 4 for r in rest)
        for r in range(WORLD):
            assert rest[r]["loss"] == pytest.approx(straight[r]["loss"][2:], rel=1e-5)  # steps 3 and 4
            assert [log["cluster/active"] for log in rest[r]["logs"]] == [1.0, 1.0]  # centroids came back
            torch.testing.assert_close(rest[r]["ids"][0], straight[r]["ids"][2], rtol=0, atol=0)  # data position too
            final, reference = float_items(rest[r]["final"]), float_items(straight[r]["final"])
            assert final.keys() == reference.keys() and "objective.cluster.centroids" in final
            for key, value in reference.items():
                torch.testing.assert_close(final[key], value, rtol=1e-5, atol=1e-6, msg=f"rank {r}: {key} differs after resume")

    def test_evaluation_on_rank_zero_with_shared_decisions(ddp_runs):
        r0, r1 = ddp_runs["eval"]
        assert r0["eval_calls"] == len(r0["evals"]) > 0 and r1["eval_calls"] == 0  # only rank 0 ran SentEval
        assert r0["evals"] == r1["evals"]  # broadcast: the same metrics on every rank
        assert r0["best_metric"] == r1["best_metric"] == max(h["eval_stsb_spearman"] for h in r0["evals"])
        assert r0["best_model_checkpoint"] == r1["best_model_checkpoint"] is not None
        assert r0["global_step"] == r1["global_step"]  # the same early-stopping decision
        # Both ranks end on the best checkpoint's weights.
        from safetensors.torch import load_file

        best = load_file(str(Path(r0["best_model_checkpoint"]) / "model.safetensors"))
        for rec in (r0, r1):
            for key, value in best.items():
                mine = rec["final"].get(f"encoder.backbone.{key}")
                if mine is not None:
                    torch.testing.assert_close(mine, value, rtol=0, atol=0)


if __name__ == "__main__":
    driver_main(sys.argv[1])
