"""Where the output folder lives across nodes: shared by every rank, or node-local (--save_on_each_node).

A multi-node run writes checkpoints from the global rank 0 (HF's should_save) while every rank writes its own
RNG state into the same checkpoint folder; on node-local disks the other nodes' parts would land in folders no
one commits, and resuming would silently lose them. With --save_on_each_node (HF's flag for node-local disks)
each node's local rank 0 writes a complete copy; on shared storage those copies would overwrite each other.
So at start-up the global rank 0 writes a probe file into --output_dir and every rank reports whether it sees
it; a layout that contradicts the flag stops every rank with the same message (no rank is left waiting).
"""
from __future__ import annotations

import contextlib
import os
import socket
import uuid

import torch.distributed as dist

PROBE_PREFIX = ".clusterns-storage-probe-"


def storage_problem(sees: list[bool], hosts: list[str], save_on_each_node: bool, multi_node: bool, output_dir: str) -> str | None:
    """The message for an output folder that contradicts --save_on_each_node (None: consistent). Pure: what each
    rank saw of rank 0's probe (sees[r]) and its host."""
    blind = [r for r, seen in enumerate(sees) if not seen]
    if blind and not save_on_each_node:
        where = ", ".join(f"rank {r} on {hosts[r]}" for r in blind[:4]) + (" ..." if len(blind) > 4 else "")
        return (f"--output_dir {output_dir!r} is not shared by all ranks ({where} cannot see rank 0's files there): "
                "their parts of each checkpoint would be lost. Put it on storage every node mounts, or pass "
                "--save_on_each_node to keep a complete copy on each node")
    if save_on_each_node and multi_node and not blind:
        return (f"--save_on_each_node with an --output_dir {output_dir!r} that every node shares: each node would "
                "write the same files at once. Drop --save_on_each_node (rank 0 writes for everyone)")
    return None


def check_output_storage(output_dir: str, save_on_each_node: bool) -> None:
    """The start-up probe (a collective: every rank calls it). Raises ValueError on every rank alike."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    world, rank = dist.get_world_size(), dist.get_rank()
    token = [uuid.uuid4().hex if rank == 0 else None]
    dist.broadcast_object_list(token, src=0)
    probe = os.path.join(output_dir, PROBE_PREFIX + token[0])
    created = rank == 0 and not os.path.isdir(output_dir)
    if rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        with open(probe, "w") as f:
            f.write(socket.gethostname())
    dist.barrier()
    seen = [None] * world
    dist.all_gather_object(seen, (os.path.exists(probe), socket.gethostname()))
    if rank == 0:
        os.remove(probe)
    multi_node = int(os.environ.get("LOCAL_WORLD_SIZE", world)) < world
    problem = storage_problem([s for s, _ in seen], [h for _, h in seen], save_on_each_node, multi_node, output_dir)
    if problem:
        if created:  # leave no empty folder behind a run that did not start
            with contextlib.suppress(OSError):
                os.rmdir(output_dir)
        raise ValueError(problem)
