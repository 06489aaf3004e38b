"""Run directories: everything they hold is read and written here, and nowhere else.

A run directory holds::

    config.yaml         the resolved TrainConfig (``model.kind`` names the model kind)
    tokenizer.json      the tokenizer the run was trained with (or tokenizer.model)
    metrics.jsonl       one JSON object per logged step or evaluation
    checkpoints/<step>/ Orbax items: params, opt_state, meta (step, data-iterator state)

Checkpoints hold arrays and JSON only: nothing is unpickled or executed when loading. A converted
Hugging Face model is a run directory whose checkpoint has ``params`` and ``meta`` only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import time
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
import yaml

from llmzoo import compress
from llmzoo.config import TrainConfig
from llmzoo.config_io import to_dict
from llmzoo.errors import CheckpointError
from llmzoo.hf.tokenizer import TOKENIZER_FILES, find_tokenizer_file, load_tokenizer
from llmzoo.layers import lora
from llmzoo.models import registry
from llmzoo.orbax_quiet import quiet_failed_saves
from llmzoo.params import abstract_params as spec_shapes
from llmzoo.presets import train_config_from_dict


def checkpoint_manager(
    run_dir: str, *, max_to_keep: int = 3, async_save: bool = True, cleanup_tmp: bool = False
):
    """An Orbax ``CheckpointManager`` over ``run_dir/checkpoints``.

    A save is written into ``<step>.orbax-checkpoint-tmp`` and renamed to ``<step>`` once
    complete, so a save cut short (a killed process, a full disk) never counts as a checkpoint.

    Args:
        run_dir: the run directory.
        max_to_keep: how many checkpoints to keep; older ones are deleted.
        async_save: write checkpoints in a background thread.
        cleanup_tmp: delete the temporary directories of saves cut short. Only for the process
            that trains the run: a reader could delete a save in progress.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        create=True,
        cleanup_tmp_directories=cleanup_tmp,
    )
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(run_dir, "checkpoints")),
        options=options,
        item_handlers={
            "params": _tree_handler(),
            "opt_state": _tree_handler(),
            "meta": ocp.JsonCheckpointHandler(),
        },
    )


# Orbax can split the write of an array replicated over several devices among its replicas
# ("replica-parallel"), each writing a slice. That spreads the writing over the processes of a
# multi-process run; in one process every replica is local, and the split only adds a sliced copy
# per replica, each slice shape a separately compiled program: about 4 s of a 10 s tiny run on
# 8 devices. So it is used only with several processes, and only for slices this large.
REPLICA_SLICE_MIN_BYTES = 1 << 20


def _tree_handler() -> ocp.PyTreeCheckpointHandler:
    """Orbax's handler of array trees, with replica-parallel writes as described above."""
    arrays = ocp.type_handlers.ArrayHandler(
        use_replica_parallel=None if jax.process_count() > 1 else False,  # None: Orbax's default
        min_slice_bytes_for_replica_parallel=REPLICA_SLICE_MIN_BYTES,
    )
    others = [t for t in ocp.type_handlers.supported_types() if t is not jax.Array]
    registry = ocp.type_handlers.create_type_handler_registry(
        (jax.Array, arrays), *((t, ocp.type_handlers.get_type_handler(t)) for t in others)
    )
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def save(mngr, step: int, params, opt_state=None, meta: dict | None = None) -> None:
    """Saves (asynchronously, if the manager is async) one checkpoint.

    Raises:
        CheckpointError: this save, or the previous asynchronous one, failed (see
            :func:`wait_until_saved`).
    """
    wait_until_saved(mngr)
    items = {"params": ocp.args.PyTreeSave(params), "meta": ocp.args.JsonSave(meta or {})}
    if opt_state is not None:
        items["opt_state"] = ocp.args.PyTreeSave(opt_state)
    try:
        mngr.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # noqa: BLE001 - OSError, or TensorStore's ValueError
        raise _save_error(mngr, step, e) from e


def wait_until_saved(mngr) -> None:
    """Blocks until the pending asynchronous save, if any, is complete.

    Raises:
        CheckpointError: the save failed (a full disk, a file-size limit ...), naming the reason
            and the step a rerun resumes from. Older checkpoints are intact, and the half-written
            one is left in a temporary directory that is never restored.
    """
    step = mngr.latest_step()  # the step being saved, if a save is pending
    try:
        mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - the background thread's error, of any type
        raise _save_error(mngr, step, e) from e


_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")  # how TensorStore reports an errno
_SAVE_FIXES = {
    errno.ENOSPC: "free disk space",
    errno.EDQUOT: "free disk space",
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
}


def _save_error(mngr, step: int | None, e: Exception) -> CheckpointError:
    """A one-line error for a failed save of checkpoint ``step``."""
    match = _OS_ERROR_CODE.search(str(e))
    code = e.errno if isinstance(e, OSError) else int(match.group(1)) if match else None
    reason = os.strerror(code) if code else (str(e).splitlines() or [type(e).__name__])[0][:200]
    mngr.reload()  # forgets the failed step
    kept = mngr.latest_step()
    resume = "start over" if kept is None else f"resume from step {kept}"
    path = os.path.join(str(mngr.directory), str(step))
    return CheckpointError(
        f"could not write the checkpoint at step {step} to {path!r}: {reason}; "
        f"{_SAVE_FIXES.get(code, 'fix the cause')} and rerun the same command to {resume}"
    )


@contextlib.contextmanager
def training_checkpoints(run_dir: str, *, max_to_keep: int = 3):
    """The checkpoint manager of the process that trains a run, for a ``with`` block.

    Temporary directories of saves cut short are deleted first. On leaving the block, also by an
    error, the pending save is finished (a diverged run keeps its finite checkpoints) and the
    manager closed. A failed save prints nothing but the :class:`CheckpointError` raised for it
    (see :func:`llmzoo.orbax_quiet.quiet_failed_saves`).

    Raises:
        CheckpointError: the last save failed.
    """
    quiet_failed_saves()
    mngr = checkpoint_manager(run_dir, max_to_keep=max_to_keep, cleanup_tmp=True)
    try:
        yield mngr
    finally:
        try:
            wait_until_saved(mngr)
        finally:
            mngr.close()


def _tree_restore(abstract) -> ocp.args.PyTreeRestore:
    """Restores into ``abstract``'s structure, shapes, dtypes and shardings."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    return ocp.args.PyTreeRestore(abstract, restore_args=restore_args)


def restore_latest(mngr, abstract_params, abstract_opt_state=None, *, quarantine: bool = True):
    """Restores the newest readable checkpoint, falling back past corrupt ones with a warning.

    Once an older checkpoint loads, the unreadable newer ones are moved to
    ``<run>/corrupt_checkpoints/`` (never deleted), so later saves at those steps cannot collide
    with them. If no checkpoint loads, nothing is moved and an error is raised: silently starting
    over would overwrite the run's history.

    Args:
        mngr: from :func:`checkpoint_manager`.
        abstract_params: tree of ``jax.ShapeDtypeStruct`` (with shardings) for the params.
        abstract_opt_state: likewise for the optimizer state; None restores params only.
        quarantine: move unreadable checkpoints aside after a successful fallback.

    Returns:
        ``(step, params, opt_state, meta)``, or None if there is no checkpoint at all.

    Raises:
        CheckpointError: checkpoints exist but none of them can be read.
    """
    failed: list[tuple[int, str]] = []
    for step in sorted(mngr.all_steps(), reverse=True):
        items = {"params": _tree_restore(abstract_params), "meta": ocp.args.JsonRestore()}
        if abstract_opt_state is not None:
            items["opt_state"] = _tree_restore(abstract_opt_state)
        try:
            out = mngr.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
            failed.append((step, str(e).splitlines()[0][:200] if str(e) else type(e).__name__))
            continue
        for bad, reason in failed:
            msg = f"checkpoint at step {bad} is unreadable ({reason}); using step {step}"
            if quarantine and jax.process_index() == 0:  # one process moves files
                msg += f"; moved it to {_quarantine(mngr, bad)}"
            warnings.warn(msg, stacklevel=2)
        return step, out["params"], out.get("opt_state"), dict(out["meta"] or {})
    if failed:
        steps = ", ".join(str(s) for s, _ in failed)
        raise CheckpointError(
            f"no checkpoint in {str(mngr.directory)!r} can be read (steps {steps}; newest: "
            f"{failed[0][1]}); restore them, or use a new run_dir to start over"
        )
    return None


def _quarantine(mngr, step: int) -> str:
    """Moves checkpoint ``step`` to ``<run>/corrupt_checkpoints/`` and returns its new path."""
    src = os.path.join(str(mngr.directory), str(step))
    run_dir = os.path.dirname(str(mngr.directory))
    dest = os.path.join(run_dir, "corrupt_checkpoints", f"{step}-{int(time.time())}")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.move(src, dest)
    mngr.reload()
    return dest


def write_config(run_dir: str, cfg: TrainConfig) -> None:
    """Writes ``config.yaml`` atomically."""
    os.makedirs(run_dir, exist_ok=True)
    tmp = os.path.join(run_dir, "config.yaml.tmp")
    with open(tmp, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    os.replace(tmp, os.path.join(run_dir, "config.yaml"))


def read_config(run_dir: str) -> TrainConfig:
    """Reads a run's ``config.yaml``."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        raise CheckpointError(
            f"{run_dir!r} is not an llmzoo run directory (no config.yaml); "
            "train one with `llmzoo train` or convert one with `llmzoo convert`"
        )
    with open(path) as f:
        return train_config_from_dict(yaml.safe_load(f))


def tokenizer_path(run_dir: str) -> str | None:
    """The tokenizer file stored in a run directory, if any."""
    return find_tokenizer_file(run_dir) if os.path.isdir(run_dir) else None


def read_tokenizer(run_dir: str):
    """Loads the tokenizer stored in a run directory.

    Raises:
        CheckpointError: the run directory holds no tokenizer file.
    """
    path = tokenizer_path(run_dir)
    if path is None:
        raise CheckpointError(
            f"run {run_dir!r} has no tokenizer.json or tokenizer.model; copy the tokenizer "
            "used for training into it"
        )
    return load_tokenizer(path)


def copy_tokenizer(src: str, run_dir: str) -> str:
    """Copies a tokenizer file (``.model`` or ``tokenizer.json``) into the run directory, removing
    any tokenizer file of the other format: a run directory never holds two tokenizers."""
    name = "tokenizer.json" if src.endswith(".json") else "tokenizer.model"
    dest = os.path.join(run_dir, name)
    if os.path.abspath(src) != os.path.abspath(dest):
        shutil.copyfile(src, dest)
    for other in TOKENIZER_FILES:
        if other != name and os.path.exists(os.path.join(run_dir, other)):
            os.remove(os.path.join(run_dir, other))
    return dest


def load_params(run_dir: str, shardings: Any = None) -> tuple[TrainConfig, Any, int]:
    """Loads the config and the newest readable params of a run directory.

    Args:
        run_dir: a training run or converted checkpoint.
        shardings: optional tree of shardings to place the params onto.

    Returns:
        ``(config, params, step)``; a LoRA run's params are its ``init_from`` base with its
        adapters merged in; a quantized run's (``quant`` set) hold
        :class:`~llmzoo.layers.quant.QuantArray` leaves, which the models use as they are.
    """
    cfg = read_config(run_dir)
    specs = registry.get(cfg.model.kind).param_specs(cfg.model)
    abstract, base = _abstract_params(specs, shardings), None
    if cfg.lora is not None:  # a LoRA run holds adapters over the params of its init_from
        source = compress.dequantize_params(load_params(cfg.init_from)[1])  # as training did
        base = lora.run_base(cfg, specs, source, shardings)
        abstract = lora.trainable_abstract(specs, cfg.lora, base)
    elif cfg.quant is not None:  # written by `llmzoo quantize`: QuantArray leaves
        abstract = compress.quantized_abstract(specs, cfg.quant, shardings)
    mngr = checkpoint_manager(run_dir, async_save=False)
    try:
        found = restore_latest(mngr, abstract, None, quarantine=False)
    finally:
        mngr.close()
    if found is None:
        raise CheckpointError(
            f"no readable checkpoint in {os.path.join(run_dir, 'checkpoints')!r}; "
            "train the run first or check the path"
        )
    step, params, _, _ = found
    params = params if base is None else lora.merged_params(base, params, cfg.lora)
    return cfg, params, step


def _abstract_params(specs, shardings=None):
    abstract = spec_shapes(specs)
    if shardings is None:
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), abstract
        )
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def check_empty(run_dir: str, *, force: bool = False) -> None:
    """Raises unless ``run_dir`` is absent or empty (or ``force`` allows replacing it).

    Raises:
        CheckpointError: naming the directory and the ``--force`` fix.
    """
    if os.path.isdir(run_dir) and os.listdir(run_dir) and not force:
        raise CheckpointError(
            f"{run_dir!r} is not empty (it may hold a trained run); write to a new directory or "
            "pass --force to replace it"
        )
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise CheckpointError(f"{run_dir!r} is a file, not a directory; choose another path")


def write_run(
    run_dir: str,
    cfg: TrainConfig,
    params,
    tokenizer_src: str | None = None,
    *,
    force: bool = False,
    extra_files: tuple[str, ...] = (),
) -> None:
    """Writes a params-only run directory (e.g. a converted checkpoint) at step 0.

    The run is written into a temporary sibling directory and moved into place only when
    complete, so a failure leaves nothing half-written.

    Args:
        run_dir: the directory to create.
        cfg: the run's config.
        params: the params tree.
        tokenizer_src: a tokenizer file to copy in.
        force: replace an existing non-empty ``run_dir`` (otherwise an error).
        extra_files: further files to copy in (e.g. a tokenizer's side files).

    Raises:
        CheckpointError: ``run_dir`` exists and is not empty, and ``force`` is not set.
    """
    check_empty(run_dir, force=force)
    parent = os.path.dirname(os.path.abspath(run_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".converting-", dir=parent)
    try:
        write_config(tmp, cfg)
        if tokenizer_src:
            copy_tokenizer(tokenizer_src, tmp)
        for src in extra_files:
            shutil.copyfile(src, os.path.join(tmp, os.path.basename(src)))
        mngr = checkpoint_manager(tmp, async_save=False)
        try:
            save(mngr, 0, params, None, {"step": 0, "source": "converted"})
            mngr.wait_until_finished()
        finally:
            mngr.close()
        if os.path.exists(run_dir):
            shutil.rmtree(run_dir)
        os.replace(tmp, run_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def read_run(run_dir: str) -> tuple[TrainConfig, Any, str | None]:
    """Reads ``(config, params, tokenizer_path)`` from a run directory."""
    cfg, params, _ = load_params(run_dir)
    return cfg, params, tokenizer_path(run_dir)
