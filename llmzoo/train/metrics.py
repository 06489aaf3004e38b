"""Metric logging: a JSONL file per run, and TensorBoard when it is installed."""

from __future__ import annotations

import json
import os


class MetricsWriter:
    """Appends one JSON object per record to ``run_dir/metrics.jsonl``.

    On resume, records past the restored step (written by an interrupted run) are dropped so the
    log reads as one uninterrupted run, and so is a last line cut short by a kill or a full disk.
    The file is rewritten atomically: a failure leaves the old one whole. An inactive writer
    (on a process other than 0 of a multi-process run) writes nothing.
    """

    def __init__(self, run_dir: str, resume_step: int = 0, *, active: bool = True):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.active = active
        self._tb = None
        if not active:
            return
        if os.path.exists(self.path):
            kept = [ln for ln, rec in _lines(self.path) if rec.get("step", 0) <= resume_step]
            with open(self.path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(self.path + ".tmp", self.path)
        try:  # optional
            from tensorboardX import SummaryWriter  # type: ignore

            self._tb = SummaryWriter(os.path.join(run_dir, "tb"))
        except Exception:  # noqa: BLE001 - TensorBoard is optional
            self._tb = None

    def write(self, record: dict) -> None:
        """Appends ``record`` (which must have a ``step``)."""
        if not self.active:
            return
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
    return [rec for _, rec in _lines(path)] if os.path.exists(path) else []


def _lines(path: str) -> list[tuple[str, dict]]:
    """``(line, record)`` for each line of a metrics file that holds a whole record."""
    out = []
    with open(path) as f:
        for ln in f:
            try:
                out.append((ln if ln.endswith("\n") else ln + "\n", json.loads(ln)))
            except json.JSONDecodeError:  # cut short by a kill or a full disk
                continue
    return out
