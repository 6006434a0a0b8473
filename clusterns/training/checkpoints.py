"""Checkpoint folders on disk: atomic commits, the latest complete checkpoint, safe loading.

Layout (HF Trainer's): ``<output_dir>/checkpoint-<step>/`` holds the encoder (model.safetensors,
config.json, tokenizer, clusterns_config.json), the objective state (objective.safetensors),
trainer_state.json, and HF's optimizer.pt / scheduler.pt / rng_state[_<rank>].pth / scaler.pt.

Atomicity. A checkpoint is written into ``tmp-checkpoint-<step>/checkpoint-<step>/`` and renamed to
``checkpoint-<step>`` only when every rank has finished writing (files fsynced first). A save that
is killed or fails therefore never leaves a folder named ``checkpoint-<step>``: resume, ``auto``,
HF's ``get_last_checkpoint``, rotation and ``--load_best_model_at_end`` only ever see complete
checkpoints. Leftover ``tmp-*`` folders of a killed save are removed by the next save of the run.

Safe loading. Weights (encoder, projector, objective state) are read from safetensors only.
HF reads optimizer.pt / scheduler.pt / scaler.pt / rng_state*.pth with
``torch.load(weights_only=True)`` (after ``check_torch_load_is_safe``, torch >= 2.6), which
refuses any pickle that would construct objects other than tensors, containers and numpy
arrays, so a tampered checkpoint raises ``UnpicklingError`` instead of running code.
"""
from __future__ import annotations

import errno
import json
import pickle
import logging
import os
import re
import shutil
import uuid

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from clusterns.io import (
    CONFIG_NAME,
    HF_CONFIG_NAME,
    MASKED_LM_STATE_NAME,
    OBJECTIVE_STATE_NAME,
    PICKLE_WEIGHTS_NAMES,
    PROJECTOR_WEIGHTS_NAME,
    TRAINER_STATE_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    safetensors_files,
)
from clusterns.modeling.projectors import MLPProjector
from clusterns.training.nan_guard import NonFiniteWeightsError, first_non_finite

logger = logging.getLogger(__name__)

WEIGHTS_NAMES = (WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
STAGING_PREFIX = "tmp-"  # tmp-checkpoint-<step> (a save in progress), tmp-replaced-..., tmp-save-...
RESUME_AUTO = "auto"
OPTIMIZER_NAME, SCHEDULER_NAME = "optimizer.pt", "scheduler.pt"  # HF Trainer's names
BEST_METRIC_NAME = "best_metric.json"

_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, quota, I/O error); the earlier checkpoints are intact."""


# ---------------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------------
def checkpoint_step(path: str) -> int | None:
    """The step of a `checkpoint-<step>` folder name (None for any other name)."""
    match = _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def missing_checkpoint_files(folder: str) -> list[str]:
    """What a training checkpoint written by ContrastiveTrainer lacks (empty: complete)."""
    missing = [name for name in (TRAINER_STATE_NAME, HF_CONFIG_NAME, CONFIG_NAME) if not os.path.isfile(os.path.join(folder, name))]
    if not any(os.path.isfile(os.path.join(folder, name)) for name in WEIGHTS_NAMES):
        missing.append(WEIGHTS_NAMES[0])
    return missing


def checkpoint_global_step(folder: str) -> int:
    """The global step recorded in a checkpoint's trainer_state.json."""
    with open(os.path.join(folder, TRAINER_STATE_NAME)) as f:
        return int(json.load(f).get("global_step", 0))


class CheckpointLoadError(ValueError):
    """A checkpoint file that cannot be used for the resume (refused for safety, or foreign to this run)."""


# The Trainer's own files in a checkpoint, read by HF with torch.load(weights_only=True).
TRAINER_PICKLES = (OPTIMIZER_NAME, SCHEDULER_NAME, "scaler.pt")


def numpy_safe_globals():
    """The numpy types transformers 5 allows when it reads rng_state.pth weights-only (trainer_pt_utils.safe_globals;
    transformers 4.57 has no such helper)."""
    np_core = np._core if hasattr(np, "_core") else np.core
    return torch.serialization.safe_globals([np_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))])


def check_trainer_files(folder: str, uses_grad_scaler: bool) -> None:
    """Before HF reads them: every optimizer/scheduler/scaler/RNG file loads weights-only (torch's error names
    neither the file nor the reason), and a scaler.pt (an fp16 run) matches this run's precision."""
    names = [n for n in TRAINER_PICKLES if os.path.isfile(os.path.join(folder, n))]
    names += sorted(n for n in os.listdir(folder) if n.startswith("rng_state") and n.endswith(".pth"))
    for name in names:
        path = os.path.join(folder, name)
        try:
            # mmap: the unpickling is checked without reading the tensors' data (the optimizer state is 2x the model)
            with numpy_safe_globals():  # the numpy types HF itself allows in rng_state.pth
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            raise CheckpointLoadError(
                f"{path} was refused for safety: it holds Python objects other than tensors and plain containers, so "
                "reading it would run code (weights-only loading). It was not written by this framework or was changed "
                "since; resume from another checkpoint"
            ) from None
        except Exception as err:  # truncated or not a torch file
            raise CheckpointLoadError(f"{path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                                      "resume from another checkpoint") from None
    if "scaler.pt" in names and not uses_grad_scaler:
        raise CheckpointLoadError(
            f"{folder} was trained with --fp16 (it holds scaler.pt, the grad scaler's state), but this run has no fp16 "
            "grad scaler (no --fp16, or the CPU): resume with the precision flags of the original run"
        )


def is_complete_checkpoint(folder: str) -> bool:
    return os.path.isdir(folder) and not missing_checkpoint_files(folder)


def latest_checkpoint(output_dir: str) -> str | None:
    """The complete `checkpoint-<step>` folder of output_dir with the highest step (None if there is none).

    Incomplete ones (e.g. left by a version without atomic saves) are skipped with a warning."""
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        step = checkpoint_step(name)
        if step is not None and os.path.isdir(os.path.join(output_dir, name)):
            found.append((step, os.path.join(output_dir, name)))
    for step, folder in sorted(found, reverse=True):
        missing = missing_checkpoint_files(folder)
        if not missing:
            return folder
        logger.warning("skipping incomplete checkpoint %s (missing %s)", folder, ", ".join(missing))
    return None


def has_optimizer_state(folder: str) -> bool:
    """Whether folder holds what continuing the training needs besides the weights (HF's optimizer.pt and
    scheduler.pt): a final model folder or a --save_only_model checkpoint does not."""
    return all(os.path.isfile(os.path.join(folder, name)) for name in (OPTIMIZER_NAME, SCHEDULER_NAME))


def finished_run(output_dir: str, latest: str | None) -> str | None:
    """output_dir itself when it holds the final model and trainer state of a run that got past its last
    checkpoint (with --save_strategy best, i.e. --load_best_model_at_end, or --save_strategy no the last step
    has no checkpoint), else None. latest: its latest complete checkpoint (latest_checkpoint). Its trainer_state.json
    is written after the final model (cli/train.py)."""
    if not is_complete_checkpoint(output_dir):
        return None
    try:
        final = checkpoint_global_step(output_dir)
    except (OSError, ValueError):
        return None
    return output_dir if latest is None or final > checkpoint_global_step(latest) else None


def resolve_resume_checkpoint(value: str | None, output_dir: str) -> str | None:
    """--resume_from_checkpoint: `auto` = the latest complete state of output_dir: its final model when the run
    got past its last checkpoint (finished_run), else its latest complete checkpoint (None: start fresh);
    a path must be a complete checkpoint folder. Raises FileNotFoundError naming what is missing."""
    if value is None or value == "":
        return None
    if value == RESUME_AUTO:
        latest = latest_checkpoint(output_dir)
        found = finished_run(output_dir, latest) or latest
        if found is None:
            logger.info("--resume_from_checkpoint auto: no complete checkpoint in %s, starting from scratch", output_dir)
        elif found == output_dir:
            logger.info("--resume_from_checkpoint auto: resuming from the final state of the run in %s (step %d)",
                        output_dir, checkpoint_global_step(output_dir))
        else:
            logger.info("--resume_from_checkpoint auto: resuming from %s", found)
        return found
    if not os.path.isdir(value):
        raise FileNotFoundError(
            f"--resume_from_checkpoint {value!r} does not exist (give a checkpoint-<step> folder, or `auto` for the "
            "latest complete checkpoint of --output_dir)"
        )
    missing = missing_checkpoint_files(value)
    if missing:
        hint = ""
        if any(os.path.isfile(os.path.join(value, name)) for name in PICKLE_WEIGHTS_NAMES):
            hint = " (it holds .bin/pickle weights: training checkpoints are read from safetensors only)"
        raise FileNotFoundError(
            f"--resume_from_checkpoint {value!r} is not a complete training checkpoint: missing {', '.join(missing)}{hint}"
        )
    return value


# ---------------------------------------------------------------------------------------------
# atomic writing
# ---------------------------------------------------------------------------------------------
def staging_root(final: str) -> str:
    """Where checkpoint `final` is written before it is committed (same file system, so rename is atomic)."""
    parent, name = os.path.split(os.path.normpath(final))
    return os.path.join(parent, f"{STAGING_PREFIX}{name}")


def _fsync_path(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # directories cannot be fsynced on some file systems
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.EISDIR, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: str) -> None:
    """Flush every file of folder (and the folders themselves) to disk before the commit rename."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            _fsync_path(os.path.join(root, name))
        _fsync_path(root)


def commit_folder(staged: str, final: str) -> None:
    """Atomically publish `staged` as `final` (a folder). An existing `final` is replaced: it is first
    renamed away (a name that is never taken for a checkpoint), so at every instant `final` is either
    the old complete folder, absent, or the new complete folder."""
    fsync_tree(staged)
    parent = os.path.dirname(os.path.normpath(final)) or "."
    old = None
    if os.path.exists(final):
        old = os.path.join(parent, f"{STAGING_PREFIX}replaced-{os.path.basename(os.path.normpath(final))}-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    os.rename(staged, final)
    _fsync_path(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_staging(run_dir: str) -> list[str]:
    """Remove what killed saves left behind (tmp-checkpoint-*, tmp-replaced-*, tmp-save-*) in run_dir."""
    removed = []
    if not os.path.isdir(run_dir):
        return removed
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if name.startswith(STAGING_PREFIX) and os.path.isdir(path) and (
            name.startswith(f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-") or name.startswith(f"{STAGING_PREFIX}replaced-")
            or name.startswith(f"{STAGING_PREFIX}save-")
        ):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.warning("removed %d incomplete save folder(s) left by an interrupted run: %s", len(removed), ", ".join(removed))
    return removed


def replace_files_from(staged: str, target: str) -> None:
    """Move every entry of `staged` into `target` with os.replace (each file atomically), then remove
    `staged`. Used for the final save into output_dir, which also holds the checkpoints and so cannot
    be renamed as a whole: each file there is either the previous complete one or the new one."""
    fsync_tree(staged)
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(staged):
        src, dst = os.path.join(staged, name), os.path.join(target, name)
        if os.path.isdir(src) and os.path.isdir(dst):
            shutil.rmtree(dst)
        os.replace(src, dst)
    _fsync_path(target)
    os.rmdir(staged)


def new_save_folder(target: str) -> str:
    """A fresh hidden-from-discovery folder inside `target` to stage a save into."""
    os.makedirs(target, exist_ok=True)
    path = os.path.join(target, f"{STAGING_PREFIX}save-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(path)
    return path


def write_json_atomic(path: str, data: dict) -> None:
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# What a failed write raises: OSError (open/write/rename), RuntimeError (torch.save: "file write failed"),
# SafetensorError (safetensors' save_file: "No space left on device").
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def write_errno(err: BaseException) -> int:
    """The errno of a failed write; torch and safetensors report it in the message only."""
    if isinstance(err, OSError) and err.errno:
        return err.errno
    text = str(err).lower()
    if "no space left" in text:
        return errno.ENOSPC
    if "quota" in text:
        return errno.EDQUOT
    return errno.EIO


def free_space(folder: str) -> str:
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        free = shutil.disk_usage(folder or ".").free
    except OSError:
        return "unknown"
    return f"{free / 2**30:.2f} GiB" if free >= 2**30 else f"{free / 2**20:.1f} MiB"


def describe_write_error(err: BaseException, what: str, run_dir: str) -> CheckpointWriteError:
    """A CheckpointWriteError saying what failed, why, the free space, and what is left to resume from."""
    code = write_errno(err)
    reason = os.strerror(code)
    if code == errno.ENOSPC:
        reason += " (the disk is full)"
    elif code == errno.EDQUOT:
        reason += " (disk quota exceeded)"
    previous = latest_checkpoint(run_dir)
    left = f"the latest complete checkpoint, {previous}, is intact" if previous else "no earlier checkpoint exists"
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    message = (
        f"could not write {what}: {reason} [{detail}]; {free_space(run_dir)} free in {run_dir}. The partial save was "
        f"removed; {left}. Free some space, then rerun the same command with --resume_from_checkpoint auto."
    )
    return CheckpointWriteError(code, message)


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def load_finite(path: str) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file, refused (naming the file and the tensor) when a tensor is NaN or infinite:
    training on from it would only skip every step, or save the broken weights again."""
    tensors = load_file(path)
    name = first_non_finite(tensors)
    if name is not None:
        raise NonFiniteWeightsError(f"{path}: {name} is not finite; this checkpoint cannot be resumed (resume from an "
                                    "earlier one, or start again)")
    return tensors


def load_contrastive_state(model: nn.Module, folder: str) -> None:
    """Restore a ContrastiveModel's encoder (backbone + projector) and objective state from a checkpoint folder
    written by ContrastiveTrainer (safetensors only; every tensor must be finite)."""
    files = safetensors_files(folder)
    if not files or not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
        raise FileNotFoundError(f"{folder!r} is not a complete checkpoint (missing {WEIGHTS_NAME} or {CONFIG_NAME})")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_finite(file))
    encoder = model.encoder
    in_weights = encoder.take_projector_tensors(state)  # else in projector.safetensors (below)
    if isinstance(encoder.projector, MLPProjector) and not in_weights and not os.path.isfile(os.path.join(folder, PROJECTOR_WEIGHTS_NAME)):
        raise FileNotFoundError(f"{folder!r} holds no MLP projector weights: this checkpoint's projector cannot be restored")
    missing, unexpected = encoder.backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {folder!r} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    projector_file = os.path.join(folder, PROJECTOR_WEIGHTS_NAME)
    if os.path.isfile(projector_file):
        encoder.projector.load_state_dict(load_finite(projector_file))
    objective_file = os.path.join(folder, OBJECTIVE_STATE_NAME)
    if os.path.isfile(objective_file):
        model.objective.load_state_dict(load_finite(objective_file))
    elif model.objective.state_dict():
        raise FileNotFoundError(f"{folder!r} has no {OBJECTIVE_STATE_NAME}: the objective's state (e.g. centroids) cannot be restored")
    if getattr(model, "masked_lm", None) is not None:
        head_file = os.path.join(folder, MASKED_LM_STATE_NAME)
        if not os.path.isfile(head_file):
            raise FileNotFoundError(f"{folder!r} has no {MASKED_LM_STATE_NAME}: it was not trained with --do_mlm, so its LM head cannot be restored")
        model.masked_lm.load_state_dict(load_finite(head_file))
