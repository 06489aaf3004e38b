"""The divergence guard of the training loop: ``on_nan: stop | skip_step``."""

from __future__ import annotations

import jax

from llmzoo import run_dir as ckpt
from llmzoo.config import TrainConfig
from llmzoo.errors import LlmzooError
from llmzoo.train.metrics import read_metrics
from llmzoo.train.step import TrainState, all_finite


class DivergenceGuard:
    """Watches the train step's ``finite`` flags and applies ``cfg.on_nan``.

    The flags stay on the device and are fetched together by :meth:`check` at log, eval and
    checkpoint steps, where the loop waits for the device anyway: no extra sync per step. With
    ``stop``, training therefore ends at the first such step at or after a non-finite one (at that
    very step when ``log_every=1``), naming the first non-finite step. Non-finite updates are never
    applied (see :func:`~llmzoo.train.step.train_step`) and :meth:`check_state` refuses to let a
    non-finite state be saved, so every checkpoint holds finite values.
    """

    def __init__(self, cfg: TrainConfig, mngr, start: int):
        self.cfg, self.mngr = cfg, mngr
        self.pending: list[tuple[int, jax.Array]] = []
        before = [r for r in read_metrics(cfg.run_dir) if "skipped_steps" in r]
        self.skipped = int(before[-1]["skipped_steps"]) if start and before else 0

    def push(self, done: int, finite: jax.Array) -> None:
        """Records step ``done``'s flag (a device scalar; not fetched)."""
        self.pending.append((done, finite))

    def check(self) -> None:
        """Fetches the pending flags; counts skipped steps, or raises (``stop``) at the first."""
        flags = jax.device_get([f for _, f in self.pending])
        bad = [done for (done, _), ok in zip(self.pending, flags, strict=True) if not ok]
        self.pending.clear()
        self.skipped += len(bad)
        if bad and self.cfg.on_nan == "stop":
            raise self._diverged(f"at step {bad[0]}: the loss or gradient norm is not finite")

    def check_state(self, state: TrainState, done: int) -> None:
        """Raises rather than let a non-finite state at step ``done`` be checkpointed."""
        if not bool(all_finite((state.params, state.opt_state))):
            raise self._diverged(f"by step {done}: the params or optimizer state are not finite")

    def _diverged(self, what: str) -> LlmzooError:
        ckpt.wait_until_saved(self.mngr)
        newest = self.mngr.latest_step()
        kept = (
            "no checkpoint was written"
            if newest is None
            else f"the newest checkpoint (step {newest}) is the last finite state"
        )
        return LlmzooError(
            f"training diverged {what}; {kept}; lower optim.lr (now {self.cfg.optim.lr!r})"
            " or set on_nan=skip_step"
        )
