"""Metric logging: a JSONL file per run, and TensorBoard when it is installed."""

from __future__ import annotations

import json
import os


class MetricsWriter:
    """Appends one JSON object per record to ``run_dir/metrics.jsonl``.

    On resume, records past the restored step (written by an interrupted run) are dropped so the
    log reads as one uninterrupted run.
    """

    def __init__(self, run_dir: str, resume_step: int = 0):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        if os.path.exists(self.path):
            with open(self.path) as f:
                kept = [
                    ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= resume_step
                ]
            with open(self.path, "w") as f:
                f.writelines(kept)
        self._tb = None
        try:  # optional
            from tensorboardX import SummaryWriter  # type: ignore

            self._tb = SummaryWriter(os.path.join(run_dir, "tb"))
        except Exception:  # noqa: BLE001 - TensorBoard is optional
            self._tb = None

    def write(self, record: dict) -> None:
        """Appends ``record`` (which must have a ``step``)."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str) -> list[dict]:
    """All records of a run's ``metrics.jsonl``."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]
