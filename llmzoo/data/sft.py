"""Instruction-tuning records, chat templates, and the offline ``synthetic_instructions`` set.

**Records** (one JSON object per line of a ``.jsonl`` file):

- Alpaca: ``{"instruction": ..., "input": ... (optional), "output": ...}``; the user turn is the
  instruction, followed by a blank line and the input when there is one.
- Chat: ``{"messages": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}``.

Both become a list of messages; the loss counts only the assistant turns (every one of them).

**Templates.** llmzoo's default template writes each turn as a role header line and its text::

    <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{response}<eos>...

where ``<eos>`` is the tokenizer's eos *id* (not text) that ends every response, so a model learns
to stop; headers are plain text. A run converted from a Hugging Face checkpoint whose tokenizer
has a Jinja chat template renders that instead (:class:`JinjaTemplate`, rendered as
``transformers`` renders it); the response of assistant turn ``i`` is what rendering turns
``..i`` adds to rendering turns ``..i-1`` with the generation prompt. Every stretch of text is
tokenized on its own, so the prompt tokens of training are exactly those a user's prompt
encodes to.

**Splits.** ``data.dataset`` is ``synthetic_instructions``, a ``.jsonl`` file (a record goes to
``validation`` when ``sha256(line) / 2**256 < data.eval_fraction``, else to ``train``), or a folder
holding ``<split>.jsonl`` files.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import os
import random
from collections.abc import Sequence

import numpy as np

from llmzoo.config import DataConfig
from llmzoo.errors import DataError

SYNTHETIC = "synthetic_instructions"
ROLES = ("system", "user", "assistant")
Segment = tuple[str, bool]  # (text, whether it is a response the loss counts)


def _fail(index: int, where: str, what: str) -> DataError:
    return DataError(f"record {index} of {where}: {what}")


def record_messages(record: dict, index: int = 0, where: str = "the data") -> list[dict]:
    """The chat messages of an Alpaca or chat record.

    Raises:
        DataError: the record has neither format, a message is malformed, or it has no
            (non-empty) response; the message names the record index and the fix.
    """
    if not isinstance(record, dict):
        raise _fail(index, where, "is not a JSON object; write one object per line")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise _fail(index, where, "'messages' is not a non-empty list of {role, content}")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise _fail(index, where, f"message {m!r} needs a role in {', '.join(ROLES)}")
            if not isinstance(m.get("content"), str):
                raise _fail(index, where, f"message {m!r} needs a string 'content'")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise _fail(index, where, "has no assistant turn to train on; add a non-empty one")
        return messages
    if "instruction" not in record:
        raise _fail(index, where, "needs 'instruction' and 'output' (Alpaca) or 'messages' (chat)")
    output = record.get("output")
    if not isinstance(output, str) or not output.strip():
        raise _fail(index, where, "has no response ('output' is missing or empty); add one")
    user = str(record["instruction"])
    if str(record.get("input") or "").strip():
        user += "\n\n" + str(record["input"])
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _merge(segments: list[Segment]) -> list[Segment]:
    """Joins neighbouring segments of the same kind and drops empty ones."""
    out: list[Segment] = []
    for text, response in segments:
        if out and out[-1][1] == response:
            out[-1] = (out[-1][0] + text, response)
        elif text:
            out.append((text, response))
    return out


class DefaultTemplate:
    """llmzoo's plain-text template (see the module docstring); eos ends every response."""

    eos_after_response = True

    def segments(self, messages: list[dict]) -> list[Segment]:
        """The template's text of ``messages`` as (text, is_response) segments."""
        out: list[Segment] = []
        for m in messages:
            if m["role"] == "assistant":
                out += [("<|assistant|>\n", False), (m["content"], True)]
            else:
                out.append((f"<|{m['role']}|>\n{m['content']}\n", False))
        return _merge(out)


def render_jinja(template: str, messages: list[dict], *, add_generation_prompt: bool, **tokens):
    """Renders a Hugging Face chat template as ``transformers`` does: a sandboxed environment
    with ``trim_blocks``, ``lstrip_blocks`` and loop controls, ``raise_exception``, a ``tojson``
    that does not escape HTML, and ``strftime_now``; ``tokens`` are e.g. ``bos_token``.

    Raises:
        DataError: the template does not parse, or raises for these messages.
    """
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **tokens
        )
    except jinja2.TemplateError as e:
        raise DataError(
            f"the tokenizer's chat template fails ({e}); fix chat_template in "
            "tokenizer_config.json, or delete it to use llmzoo's default template"
        ) from None


class JinjaTemplate:
    """A tokenizer's own Jinja chat template; its text holds the end-of-turn tokens."""

    eos_after_response = False

    def __init__(self, template: str, **tokens: str):
        self.template = template
        self.tokens = tokens

    def _render(self, messages: list[dict], prompt: bool) -> str:
        return render_jinja(self.template, messages, add_generation_prompt=prompt, **self.tokens)

    def segments(self, messages: list[dict]) -> list[Segment]:
        """(text, is_response) segments; raises DataError when rendering a conversation's
        prefix is not a prefix of rendering all of it (the responses cannot be located)."""
        full = self._render(messages, False)
        out: list[Segment] = []
        done = 0  # characters of ``full`` already in ``out``
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before, after = self._render(messages[:i], True), self._render(messages[: i + 1], False)
            if not (after.startswith(before) and full.startswith(after) and len(before) >= done):
                raise DataError(
                    "the tokenizer's chat template renders a conversation's beginning differently "
                    "from the whole conversation; train with llmzoo's default template instead "
                    "(delete chat_template from the run's tokenizer_config.json)"
                )
            out += [(full[done : len(before)], False), (full[len(before) : len(after)], True)]
            done = len(after)
        return _merge(out + [(full[done:], False)])


def encode_segments(
    segments: list[Segment], tokenizer, *, eos_after_response: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the segments, each segment encoded on its own.

    Returns:
        ``(ids [L] int32, response [L] bool)``: ``response`` marks the tokens of response
        segments (and the eos after each, with ``eos_after_response``).

    Raises:
        DataError: ``eos_after_response`` and the tokenizer has no eos id.
    """
    if eos_after_response and tokenizer.eos_id < 0:
        raise DataError(f"tokenizer {tokenizer.path!r} has no eos id to end each response with")
    ids: list[int] = []
    response: list[bool] = []
    for text, is_response in segments:
        piece = tokenizer.encode(text)
        if is_response and eos_after_response:
            piece = piece + [tokenizer.eos_id]
        ids += piece
        response += [is_response] * len(piece)
    return np.asarray(ids, np.int32), np.asarray(response, bool)


def _read_jsonl(path: str) -> list[tuple[str, dict]]:
    """(line, record) of every non-blank line of a JSONL file."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path!r} ({e}); give a UTF-8 .jsonl file") from None
    out = []
    for number, line in enumerate(lines):
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"record {number} of {path!r} is not JSON ({e.msg}); fix it") from None
    return out


def _held_out(text: str, fraction: float) -> bool:
    """Whether ``text``'s record is held out: its sha256 as a fraction of 2**64 is below
    ``fraction``. Not crc32: it is affine in the input bits, so texts that differ in a few
    characters do not spread over its range (no sum of two digits would be held out)."""
    return (
        int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") < fraction * 2**64
    )


def load_records(data: DataConfig, split: str) -> list[dict]:
    """The records of one split of ``data.dataset`` (see the module docstring), each checked
    with :func:`record_messages`.

    Raises:
        DataError: the dataset or split does not exist, or a record is malformed.
    """
    name = data.dataset
    if name == SYNTHETIC:
        return synthetic_instructions(split)
    if os.path.isdir(name):
        path = os.path.join(name, f"{split}.jsonl")
        if not os.path.isfile(path):
            raise DataError(f"data.dataset={name!r} has no {split}.jsonl; add it or fix the split")
        records = [r for _, r in _read_jsonl(path)]
    elif name.endswith(".jsonl") and os.path.isfile(name):
        if split not in ("train", "validation"):
            raise DataError(f"split {split!r} of {name!r} is unknown; use train or validation")
        path, lines = name, _read_jsonl(name)
        held_out = split == "validation"
        records = [r for line, r in lines if _held_out(line, data.eval_fraction) == held_out]
    else:
        raise DataError(
            f"data.dataset={name!r} is not {SYNTHETIC!r}, a .jsonl file or a folder of "
            "<split>.jsonl files; fix the path (relative to the working directory)"
        )
    for index, record in enumerate(records):
        record_messages(record, index, f"{split} of {path!r}")
    if not records:
        raise DataError(f"split {split!r} of {name!r} holds no records; add some")
    return records


_TASK_PROMPTS = {
    "repeat": "Repeat the digits.",
    "reverse": "Reverse the digits.",
    "sort": "Sort the digits.",
    "add": "Add the numbers.",
}


def _task_records() -> list[dict]:
    """Every distinct record of the synthetic tasks, in a fixed order."""
    out = []
    for digits in itertools.product("0123456789", repeat=3):
        x = "".join(digits)
        out.append(("repeat", x, x))
        out.append(("reverse", x, x[::-1]))
        out.append(("sort", x, "".join(sorted(x))))
    for a, b in itertools.product(range(10), repeat=2):
        out.append(("add", f"{a} {b}", str(a + b)))
    return [{"instruction": _TASK_PROMPTS[t], "input": x, "output": y} for t, x, y in out]


def synthetic_instructions(
    split: str, *, seed: int = 0, tasks: Sequence[str] = ("reverse", "add")
) -> list[dict]:
    """The offline instruction set as Alpaca records: reverse or sort three digits
    (``Reverse the digits.`` / ``381`` -> ``183``), or add two numbers below 10
    (``Add the numbers.`` / ``7 5`` -> ``12``). Digits keep the tasks learnable whatever the
    tokenizer: no tokenizer trained here merges them.

    A record is held out (``validation``) when ``sha256(instruction + input) / 2**256 < 0.1``, so
    the splits are disjoint for any seed; ``seed`` only shuffles the order.

    Raises:
        DataError: ``split`` is not train or validation, or a task is unknown.
    """
    if split not in ("train", "validation"):
        raise DataError(f"split {split!r} of {SYNTHETIC!r} is unknown; use train or validation")
    unknown = sorted(set(tasks) - set(_TASK_PROMPTS))
    if unknown:
        raise DataError(f"unknown synthetic task {unknown[0]!r}; use {', '.join(_TASK_PROMPTS)}")
    chosen = [_TASK_PROMPTS[t] for t in tasks]
    records = [r for r in _task_records() if r["instruction"] in chosen]
    held_out = split == "validation"
    records = [r for r in records if _held_out(r["instruction"] + r["input"], 0.1) == held_out]
    random.Random(seed).shuffle(records)
    return records


def write_jsonl(records: Sequence[dict], path: str) -> str:
    """Writes records one JSON object a line (e.g. ``synthetic_instructions('train')``, to see
    the format or to edit it) and returns ``path``."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return path
