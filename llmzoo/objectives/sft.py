"""Supervised instruction tuning (SFT): chat records -> packed next-token examples whose loss
counts only the response tokens.

Each record (see :mod:`llmzoo.data.sft`) is rendered by the run's chat template and tokenized
into ids ``x [L + 1]`` with a response flag per id; its example is ``tokens = x[:-1]``,
``targets = x[1:]`` and ``loss_mask = response[1:]`` (1 where the target is a response token:
every assistant turn and the eos that ends it; system, user and template tokens are 0). The
records protocol packs examples into rows of T tokens; :meth:`SftExamples.finish` adds
``segment_ids`` (1, 2, ... per example, 0 on padding) and ``positions`` (restarting at 0 per
example), so attention (and a recurrent state) stays within an example and no target crosses
an example boundary. Packing splits an example that does not fit the rest of a row; its
remainder starts the next row without its prompt, so its loss is masked (longer rows waste
less). The loss is :func:`llmzoo.objectives.losses.token_loss`.
"""

from __future__ import annotations

import os

import numpy as np

from llmzoo.config import DataConfig, TrainConfig
from llmzoo.data.sft import (
    DefaultTemplate,
    JinjaTemplate,
    encode_segments,
    load_records,
    record_messages,
)
from llmzoo.hf.chat_template import find_chat_template


def template_for(tokenizer) -> DefaultTemplate | JinjaTemplate:
    """The tokenizer's own Jinja chat template (a converted Hugging Face checkpoint's, stored
    beside its tokenizer file), else llmzoo's :class:`~llmzoo.data.sft.DefaultTemplate`."""
    template = find_chat_template(os.path.dirname(os.path.abspath(tokenizer.path)))
    if template is None:
        return DefaultTemplate()
    tokens = {}
    for name in ("bos", "eos", "pad"):
        tid = getattr(tokenizer, f"{name}_id", -1)
        tokens[f"{name}_token"] = tokenizer.id_to_piece(tid) if tid is not None and tid >= 0 else ""
    return JinjaTemplate(template, **tokens)


class SftExamples:
    """The records protocol's examples object for ``sft`` (see the module docstring).

    Attributes:
        row_len: T, the packed row length (``seq_len``).
        template: the chat template records are rendered with.
    """

    records = True
    pack = True
    random = False

    def __init__(self, seq_len: int, tokenizer, template=None):
        self.row_len = seq_len
        self.tokenizer = tokenizer
        self.template = template if template is not None else template_for(tokenizer)

    def load(self, data: DataConfig, split: str) -> list[dict]:
        """The checked records of a split (see :func:`llmzoo.data.sft.load_records`)."""
        return load_records(data, split)

    def encode(self, record: dict) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [L + 1] int32, response [L + 1] bool)`` of one record."""
        segments = self.template.segments(record_messages(record))
        eos = self.template.eos_after_response
        return encode_segments(segments, self.tokenizer, eos_after_response=eos)

    def __call__(self, record: dict) -> dict[str, np.ndarray]:
        """One unpacked example, each ``[L]``: ``tokens``, ``targets`` (int32), ``loss_mask``
        (float32) and ``offsets`` (0 .. L-1, which tells :meth:`finish` where packing split it)."""
        ids, response = self.encode(record)
        return {
            "tokens": ids[:-1],
            "targets": ids[1:],
            "loss_mask": response[1:].astype(np.float32),
            "offsets": np.arange(len(ids) - 1, dtype=np.int32),
        }

    def finish(self, packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A packed row (``[T]`` arrays with Grain's ``tokens_segment_ids``/``tokens_positions``)
        -> the model batch row: ``tokens``, ``targets``, ``loss_mask``, ``segment_ids``,
        ``positions``, each ``[T]``.

        The remainder of an example split at the end of the previous row (its ``offsets`` do not
        start at 0) has lost its prompt: its loss mask is 0.
        """
        seg, pos = packed["tokens_segment_ids"], packed["tokens_positions"]
        whole = (seg != 0) & (packed["offsets"] == pos)
        return {
            "tokens": packed["tokens"].astype(np.int32),
            "targets": packed["targets"].astype(np.int32),
            "loss_mask": packed["loss_mask"].astype(np.float32) * whole,
            "segment_ids": seg.astype(np.int32),
            "positions": pos.astype(np.int32),
        }

    def prompt_and_reference(self, record: dict) -> tuple[list[int], str]:
        """The prompt ids of a record's last response (every id before it, exactly as in
        training) and the text of its last assistant turn."""
        ids, response = self.encode(record)
        at = np.flatnonzero(response)
        start = at[np.r_[True, np.diff(at) > 1]][-1]  # the first id of the last response
        last = [m for m in record_messages(record) if m["role"] == "assistant"][-1]
        return ids[:start].tolist(), last["content"]

    def run_files(self) -> dict[str, str]:
        """The Jinja chat template, kept beside the run's tokenizer so that evaluation and
        generation from the run render it too."""
        if isinstance(self.template, JinjaTemplate):
            return {"chat_template.jinja": self.template.template}
        return {}


def sft_examples(cfg: TrainConfig, tokenizer) -> SftExamples:
    """The ``examples`` hook of the ``sft`` objective."""
    return SftExamples(cfg.seq_len, tokenizer)
