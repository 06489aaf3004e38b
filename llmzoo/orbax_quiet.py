"""Quiet Orbax's reports of a failed asynchronous save, which llmzoo raises as one error.

:mod:`llmzoo.run_dir` raises a failed checkpoint save as one ``CheckpointError`` line; what
Orbax, asyncio and TensorStore print about the same failure is dropped here.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import orbax.checkpoint as ocp

_ORBAX_DIR = os.path.dirname(os.path.dirname(ocp.__file__))
_quiet: list[bool] = []  # holds True once the filters below are installed


def quiet_failed_saves() -> None:
    """From now on, drops what a failed asynchronous save prints besides its CheckpointError.

    When a save fails, Orbax logs it with tracebacks from its background threads and abandons
    its other writes: asyncio logs them when they are garbage-collected (as late as interpreter
    exit), Python warns that some were never awaited, and TensorStore reports the closed event
    loop of the writes still in flight as unraisable exceptions. ``llmzoo.run_dir.save`` and
    ``wait_until_saved`` raise the failure as one :class:`CheckpointError` instead. Only
    errors raised in or logged by Orbax are dropped, and a closed event loop's. Idempotent.
    """
    if _quiet:
        return
    _quiet.append(True)
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_not_orbax_error)
    warnings.filterwarnings(
        "ignore", r"coroutine '.*write_fragment' was never awaited", RuntimeWarning
    )
    previous = sys.unraisablehook
    sys.unraisablehook = lambda u: None if _is_orbax_unraisable(u) else previous(u)


_ORBAX_TMP = ".orbax-checkpoint-tmp"  # Orbax's name for a save in progress


def _not_orbax_error(record: logging.LogRecord) -> bool:
    """False for an error logged by Orbax, or about a write into a save in progress: asyncio
    logs a TensorStore write future whose error was never retrieved with no Orbax frame."""
    if record.levelno < logging.ERROR:
        return True
    exc = record.exc_info[1] if record.exc_info else None
    text = record.getMessage()
    about = record.pathname.startswith(_ORBAX_DIR) or _ORBAX_DIR in text or _ORBAX_TMP in text
    return not (about or _ORBAX_TMP in str(exc or "") or _raised_in_orbax(exc))


def _is_orbax_unraisable(unraisable) -> bool:
    exc, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
    closed_loop = isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
    in_orbax = code is not None and code.co_filename.startswith(_ORBAX_DIR)
    return closed_loop or in_orbax or _raised_in_orbax(exc)


def _raised_in_orbax(exc: BaseException | None) -> bool:
    tb = getattr(exc, "__traceback__", None)
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(_ORBAX_DIR):
            return True
        tb = tb.tb_next
    return False
