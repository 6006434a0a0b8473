"""Beyond one node: 2 "nodes" x 1 process (two torchrun commands, --nnodes 2, static rendezvous on 127.0.0.1) equal
one process on the global batch; only the global rank 0 evaluates and writes (node 1's local rank 0 does not);
--save_on_each_node keeps a complete copy on node-local folders; a folder layout that contradicts the flag stops
both nodes; torchrun --max-restarts resumes a group whose worker was SIGKILLed after a checkpoint and ends on the
uninterrupted run's weights; --mask_duplicates under DDP equals one process.

torchrun runs this file as a script (test_ddp_equivalence.py's driver and recorder): the runs of a spec file, each
rank's record saved as <out>/rank<RANK>.pt, optionally killing itself after a checkpoint or recording which files it
wrote (run_one).
"""
from __future__ import annotations

import builtins
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import torch  # noqa: E402

import test_ddp_equivalence as ddp  # noqa: E402  (the recorder, the assets, the comparison)

WRITE_MODES = ("w", "a", "x", "+")


@contextlib.contextmanager
def recording_writes(root: str, record: list):
    """Every file this process opens for writing, saves with torch.save or renames into place, under root (relative
    paths). safetensors writes in Rust and is not seen: rank 0's model files are checked on disk instead."""
    root = os.path.realpath(root)
    original_open, original_replace, original_rename = builtins.open, os.replace, os.rename

    def note(path) -> None:
        try:
            real = os.path.realpath(os.fspath(path))
        except TypeError:
            return
        if real.startswith(root + os.sep):
            record.append(os.path.relpath(real, root))

    def spy_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(m in mode for m in WRITE_MODES):
            note(file)
        return original_open(file, mode, *args, **kwargs)

    def spy_replace(src, dst, *args, **kwargs):
        note(dst)
        return original_replace(src, dst, *args, **kwargs)

    def spy_rename(src, dst, *args, **kwargs):
        note(dst)
        return original_rename(src, dst, *args, **kwargs)

    original_save = torch.save

    def spy_save(obj, f, *args, **kwargs):  # torch.save opens a path in C++, not through open()
        if isinstance(f, (str, os.PathLike)):
            note(f)
        return original_save(obj, f, *args, **kwargs)

    builtins.open, os.replace, os.rename, torch.save = spy_open, spy_replace, spy_rename, spy_save
    try:
        yield record
    finally:
        builtins.open, os.replace, os.rename, torch.save = original_open, original_replace, original_rename, original_save


@contextlib.contextmanager
def killed_after_checkpoint(rank: int, step: int):
    """On the first attempt (TORCHELASTIC_RESTART_COUNT 0), the given rank SIGKILLs itself right after the
    checkpoint of `step` is committed (as a worker lost to the OOM killer or a node failure)."""
    from clusterns.training import trainer as T

    original = T.ContrastiveTrainer._save_checkpoint

    def save_then_die(self, model, trial):
        original(self, model, trial)
        if (int(os.environ["RANK"]) == rank and self.state.global_step == step
                and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
            os.kill(os.getpid(), signal.SIGKILL)

    T.ContrastiveTrainer._save_checkpoint = save_then_die
    try:
        yield
    finally:
        T.ContrastiveTrainer._save_checkpoint = original


def run_one(run: dict) -> dict:
    """One run of the spec under the driver's options: a kill after a checkpoint, a record of the files written."""
    writes: list[str] = []
    with contextlib.ExitStack() as stack:
        if run.get("kill"):
            stack.enter_context(killed_after_checkpoint(**run["kill"]))
        if run.get("record_writes"):
            stack.enter_context(recording_writes(run["record_writes"], writes))
        record = ddp.run_recorded(run["argv"])
    record["writes"] = writes
    record["restart_count"] = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    return record


# ---------------------------------------------------------------------------------------------
# pytest side
# ---------------------------------------------------------------------------------------------
if __name__ != "__main__":
    import pytest

    pytestmark = pytest.mark.multiprocess

    @pytest.fixture(scope="module")
    def assets(tmp_path_factory):
        return ddp.build_assets(tmp_path_factory)
    NODES = 2

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def worker_env() -> dict:
        return dict(os.environ, OMP_NUM_THREADS="1",
                    PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))

    def two_nodes(specs: list[list[dict]], cwds: list[Path], timeout: int = 600) -> list[subprocess.CompletedProcess]:
        """One torchrun per "node" (--nnodes 2 --nproc_per_node 1, static rendezvous at 127.0.0.1), started
        together; node r runs specs[r] in cwds[r]. Returns both results (stdout/stderr as text)."""
        port = free_port()
        procs = []
        for node, (spec, cwd) in enumerate(zip(specs, cwds)):
            cwd.mkdir(parents=True, exist_ok=True)
            spec_file = cwd / f"spec-node{node}.json"
            spec_file.write_text(json.dumps(spec))
            command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(NODES), "--node_rank", str(node),
                       "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                       str(Path(__file__).resolve()), str(spec_file)]
            procs.append(subprocess.Popen(command, cwd=cwd, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = []
        deadline = time.time() + timeout
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                raise
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        return results

    def assert_ok(results) -> None:
        for node, proc in enumerate(results):
            assert proc.returncode == 0, f"node {node} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    def argv(assets, out, *flags, batch=ddp.LOCAL_BATCH, ddp_run=True) -> list[str]:
        return [str(a) for a in [*ddp.common_argv(assets, out, batch, ddp=ddp_run), *flags]]

    def duplicated_corpus(assets, root: Path) -> Path:
        """The 48-sentence corpus with its first 12 sentences repeated 3 more times: batches hold duplicates."""
        lines = Path(assets["corpus"]).read_text().splitlines()
        path = root / "corpus-duplicates.txt"
        path.write_text("\n".join(lines + lines[:12] * 3) + "\n")
        return path

    MULTINODE_RUNS = {
        "infonce": ddp.OBJECTIVE_FLAGS["infonce"],
        "clusterns": ddp.OBJECTIVE_FLAGS["clusterns"],
        "duplicates": [*ddp.OBJECTIVE_FLAGS["infonce"], "--mask_duplicates", "--max_steps", "3"],
    }

    @pytest.fixture(scope="module")
    def multinode(assets, tiny_sts_dir, tmp_path_factory):
        """One 2-node launch on shared storage: infonce, clusterns, --mask_duplicates, and an evaluated run with
        checkpoints whose file writes are recorded on each rank."""
        root = tmp_path_factory.mktemp("multinode")
        dup_corpus = duplicated_corpus(assets, root)
        spec, outs = [], {}
        for name, flags in MULTINODE_RUNS.items():
            out = root / name
            out.mkdir()
            run_argv = argv(assets, out / "run", *flags)
            if name == "duplicates":
                run_argv[run_argv.index("--train_file") + 1] = str(dup_corpus)
            spec.append({"argv": run_argv, "out": str(out)})
            outs[name] = out
        out = root / "eval"
        out.mkdir()
        spec.append({"argv": [str(a) for a in ddp.eval_argv(assets, tiny_sts_dir, out / "run")], "out": str(out),
                     "record_writes": str(out / "run")})
        outs["eval"] = out
        results = two_nodes([spec, spec], [root / "node0", root / "node1"])
        assert_ok(results)
        return {"records": {name: ddp.rank_records(out) for name, out in outs.items()}, "outs": outs, "corpus": dup_corpus,
                "stderr": [r.stderr for r in results]}

    @pytest.mark.parametrize("name", list(MULTINODE_RUNS))
    def test_two_nodes_equal_one_process(name, assets, multinode, tmp_path):
        ranks = multinode["records"][name]
        flags = MULTINODE_RUNS[name]
        single_argv = argv(assets, tmp_path / "single", *flags, batch=ddp.WORLD * ddp.LOCAL_BATCH, ddp_run=False)
        if name == "duplicates":
            single_argv[single_argv.index("--train_file") + 1] = str(multinode["corpus"])
        single = ddp.run_recorded(single_argv)
        steps = len(single["loss"])
        assert steps > 0 and all(len(rec["loss"]) == steps for rec in ranks)
        for step in range(steps):
            torch.testing.assert_close(torch.cat([rec["ids"][step] for rec in ranks]), single["ids"][step], rtol=0, atol=0)
            for rec in ranks:
                assert rec["loss"][step] == pytest.approx(single["loss"][step], rel=1e-5), f"{name} step {step + 1}"
        if name == "clusterns":
            assert [log["cluster/active"] for log in ranks[0]["logs"]] == [0.0, 1.0, 1.0]
            for rec in ranks:
                torch.testing.assert_close(rec["final"]["objective.cluster.centroids"], single["final"]["objective.cluster.centroids"],
                                           rtol=1e-4, atol=1e-5)
        if name == "duplicates":
            # the batches do hold duplicates, split across the nodes, and masking them changed the loss
            assert any(len({tuple(r.tolist()) for r in ids[:, 0]}) < ids.shape[0] for ids in single["ids"])
            plain_argv = [a for a in single_argv if a != "--mask_duplicates"]
            plain_argv[plain_argv.index("--output_dir") + 1] = str(tmp_path / "plain")
            plain = ddp.run_recorded(plain_argv)
            assert plain["ids"][0].shape == single["ids"][0].shape
            assert any(abs(a - b) > 1e-4 for a, b in zip(plain["loss"], single["loss"]))
        ddp.assert_same_update(ranks, single, name)

    def test_the_training_log_is_written_once(multinode):
        """HF logs on every node's local rank 0 by default (--log_on_each_node); the run logs once, on rank 0."""
        node0, node1 = multinode["stderr"]
        assert "training corpus:" in node0 and "training corpus:" not in node1

    def test_only_global_rank_zero_evaluates_and_writes(multinode):
        r0, r1 = multinode["records"]["eval"]
        assert r0["eval_calls"] == len(r0["evals"]) > 0 and r1["eval_calls"] == 0  # node 1's local rank 0 did not evaluate
        assert r0["evals"] == r1["evals"] and r0["best_model_checkpoint"] == r1["best_model_checkpoint"] is not None
        run = Path(multinode["outs"]["eval"]) / "run"
        assert (run / "model.safetensors").is_file() and (run / "trainer_state.json").is_file()
        assert any(w.endswith("trainer_state.json") for w in r0["writes"])  # the spy sees rank 0's writes
        # Node 1 writes only its own RNG state into each checkpoint (HF's per-rank file), nothing else.
        assert r1["writes"], "the spy recorded nothing on rank 1: the check would be vacuous"
        assert all(os.path.basename(w) == "rng_state_1.pth" for w in r1["writes"]), r1["writes"]
        for checkpoint in run.glob("checkpoint-*"):
            assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}

    def test_save_on_each_node_keeps_a_complete_copy_per_node(assets, tmp_path):
        """Node-local folders (each node in its own working directory, --output_dir relative): with
        --save_on_each_node both copies hold the final model and complete checkpoints, equal weights."""
        flags = [*ddp.OBJECTIVE_FLAGS["infonce"], "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
                 "--save_on_each_node"]
        specs = []
        for node in range(NODES):
            out = tmp_path / f"node{node}"
            out.mkdir()
            specs.append([{"argv": argv(assets, "run", *flags), "out": str(out)}])
        assert_ok(two_nodes(specs, [tmp_path / "node0", tmp_path / "node1"]))
        for node in range(NODES):
            run = tmp_path / f"node{node}" / "run"
            assert (run / "model.safetensors").is_file() and (run / "config.json").is_file(), node
            checkpoint = run / "checkpoint-2"
            assert (checkpoint / "model.safetensors").is_file() and (checkpoint / f"rng_state_{node}.pth").is_file()
        records = [torch.load(tmp_path / f"node{n}" / f"rank{n}.pt", weights_only=False) for n in range(NODES)]
        for key, value in records[0]["final"].items():
            torch.testing.assert_close(records[1]["final"][key], value, rtol=0, atol=0)

    @pytest.mark.parametrize("layout, message", [
        ("node-local", "is not shared by all ranks"),
        ("shared", "--save_on_each_node with an --output_dir"),
    ])
    def test_output_folder_layout_that_contradicts_the_flag_stops_both_nodes(layout, message, assets, tmp_path):
        flags = [*ddp.OBJECTIVE_FLAGS["infonce"], "--max_steps", "1", *(["--save_on_each_node"] if layout == "shared" else [])]
        out = "run" if layout == "node-local" else str(tmp_path / "shared" / "run")
        specs = [[{"argv": argv(assets, out, *flags), "out": str(tmp_path)}]] * NODES
        results = two_nodes(specs, [tmp_path / "node0", tmp_path / "node1"], timeout=300)
        for node, proc in enumerate(results):
            assert proc.returncode != 0 and message in proc.stderr, f"node {node}:\n{proc.stderr[-3000:]}"
        assert not (tmp_path / "node1" / "run" / "model.safetensors").exists()

    def test_elastic_restart_resumes_and_equals_the_uninterrupted_run(assets, tmp_path):
        """torchrun --max-restarts 1; rank 1 SIGKILLed right after checkpoint-2 (first attempt only): torchrun
        restarts the group, which resumes from checkpoint-2 by itself (no --resume_from_checkpoint given: a restart
        means auto) and ends with exit 0 on the weights of the uninterrupted run."""
        flags = [*ddp.RESUME_FLAGS, "--max_steps", "4"]
        out = tmp_path / "elastic"
        out.mkdir()
        spec = [{"argv": argv(assets, out / "run", *flags), "out": str(out), "kill": {"rank": 1, "step": 2}}]
        spec_file = tmp_path / "spec.json"
        spec_file.write_text(json.dumps(spec))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ddp.WORLD),
                   "--max-restarts", "1", str(Path(__file__).resolve()), str(spec_file)]
        proc = subprocess.run(command, cwd=tmp_path, env=worker_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        ranks = ddp.rank_records(out)
        assert all(rec["restart_count"] == 1 for rec in ranks)  # the records are the restarted attempt's
        assert all(rec["global_step"] == 4 and len(rec["loss"]) == 2 for rec in ranks)  # steps 3-4 only: it resumed
        assert "resuming from the latest complete checkpoint" in proc.stderr
        single = ddp.run_recorded(argv(assets, tmp_path / "single", *flags, batch=ddp.WORLD * ddp.LOCAL_BATCH, ddp_run=False))
        for rec in ranks:
            for key, value in ddp.float_items(single["final"]).items():
                torch.testing.assert_close(ddp.float_items(rec["final"])[key], value, rtol=1e-4, atol=1e-5, msg=key)


if __name__ == "__main__":
    ddp.driver_main(sys.argv[1], run_one)
