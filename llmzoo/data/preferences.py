"""Preference records ``{'prompt', 'chosen', 'rejected'}``: from JSONL files, or synthetic tasks
whose reward is computable.

A record pairs one prompt with a preferred (``chosen``) and a dispreferred (``rejected``)
completion, the data of reward models (Bradley-Terry) and of DPO (see
:mod:`llmzoo.objectives.preference`).

- ``data.dataset=prefs.jsonl`` (or a folder holding ``train.jsonl`` and ``validation.jsonl``):
  one JSON object per line with the three string keys; the split of a single file is chosen by
  a stable hash of its prompt (``data.eval_fraction`` held out), so that no prompt is in both.
- ``data.dataset=synthetic_preferences`` (all tasks) or ``synthetic_preferences:sort,add`` (a
  mix): offline tasks, deterministic by seed, whose train and validation prompts are disjoint
  (a stable hash of the prompt picks its split). Each task has a reward function
  ``reward(prompt, completion) -> float`` in ``[0, 1]`` (:data:`REWARD_FNS`), with which every
  chosen completion scores higher than its rejected one:

  ==========  ==========================  ===========  ===============  ============================
  task        prompt                      chosen       rejected         reward
  ==========  ==========================  ===========  ===============  ============================
  ``sort``    ``sort: 5 2 9 ->``          `` 2 5 9``   `` 5 9 2``       share of places in order
  ``add``     ``add 12 30 =``             `` 42``      `` 45``          ``1 / (1 + |answer - sum|)``
  ``end``     ``end with fox: cat owl``   `` bee fox`` `` bee cow``     1 if the last word is it
  ==========  ==========================  ===========  ===============  ============================
"""

from __future__ import annotations

import functools
import json
import os
import re
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from llmzoo.errors import DataError

KEYS = ("prompt", "chosen", "rejected")
SYNTHETIC = "synthetic_preferences"
WORDS = ("cat", "dog", "fox", "owl", "bee", "ant", "cow", "pig", "hen", "rat", "elk", "yak")
SYNTHETIC_SIZES = {"train": 3000, "validation": 300}  # records per split of the whole mix
VALIDATION_SHARE = 10  # one prompt in 10 (by hash) is held out


def check_record(record, index: int, source: str) -> dict:
    """``record`` as a preference dict, or a one-line DataError naming ``source`` and ``index``.

    Raises:
        DataError: not an object, a key missing or not a string, an empty completion, or
            ``chosen`` identical to ``rejected``.
    """
    where = f"preference record {index} of {source}"
    if not isinstance(record, dict):
        raise DataError(f"{where} is not a JSON object; write {{'prompt', 'chosen', 'rejected'}}")
    for key in KEYS:
        if not isinstance(record.get(key), str):
            raise DataError(f"{where} has no string {key!r}; every record needs {', '.join(KEYS)}")
    for key in ("chosen", "rejected"):
        if not record[key]:
            raise DataError(f"{where} has an empty {key!r}; give both completions some text")
    if record["chosen"] == record["rejected"]:
        raise DataError(
            f"{where} has identical chosen and rejected completions; drop it or fix one of them"
        )
    return {key: record[key] for key in KEYS}


def read_jsonl(path: str) -> list[dict]:
    """The checked preference records of one JSONL file (blank lines skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"line {line_no} of {path} is not JSON ({e.msg}); write one object a line"
                ) from None
            records.append(check_record(record, len(records), path))
    return records


def held_out(prompt: str, share: float) -> bool:
    """Whether ``prompt`` belongs to ``validation``: a stable hash of its text, not its order."""
    return zlib.crc32(prompt.encode("utf-8")) % 10_000 < share * 10_000


def load_jsonl(dataset: str, split: str, eval_fraction: float) -> list[dict]:
    """The ``split`` of a JSONL file (hash-split by prompt) or of a folder of ``<split>.jsonl``.

    Raises:
        DataError: the file or the split is missing, or a record is bad.
    """
    if os.path.isdir(dataset):
        path = os.path.join(dataset, f"{split}.jsonl")
        if not os.path.isfile(path):
            raise DataError(f"{path!r} not found; a preference folder holds <split>.jsonl files")
        return read_jsonl(path)
    if not os.path.isfile(dataset):
        raise DataError(
            f"data.dataset={dataset!r} is not a JSONL file of preference records nor "
            f"{SYNTHETIC!r}; give a path to {{'prompt', 'chosen', 'rejected'}} lines"
        )
    if split not in ("train", "validation"):
        raise DataError(f"split {split!r} of {dataset!r}; a single file has train and validation")
    records = read_jsonl(dataset)
    keep = [r for r in records if held_out(r["prompt"], eval_fraction) == (split == "validation")]
    if not keep:
        raise DataError(
            f"the {split!r} split of {dataset!r} is empty ({len(records)} records); add records "
            "or change data.eval_fraction"
        )
    return keep


# The synthetic tasks: make(rng) -> (prompt, chosen, rejected) and reward(prompt, completion).


def _ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", text)]


def make_sort(rng: np.random.Generator) -> tuple[str, str, str]:
    """``sort: 5 2 9 ->``: chosen the numbers ascending, rejected another order of them."""
    xs = [int(x) for x in rng.choice(10, size=int(rng.integers(3, 5)), replace=False)]
    order = sorted(xs)
    wrong = order
    while wrong == order:
        wrong = [int(x) for x in rng.permutation(xs)]
    say = " ".join
    return f"sort: {say(map(str, xs))} ->", " " + say(map(str, order)), " " + say(map(str, wrong))


def reward_sort(prompt: str, completion: str) -> float:
    """The share of places where ``completion`` holds the sorted prompt's number (over the
    longer of the two lists, so extra or missing numbers cost)."""
    want, got = sorted(_ints(prompt.split("->")[0])), _ints(completion)
    if not want:
        return 0.0
    hits = sum(a == b for a, b in zip(want, got, strict=False))
    return hits / max(len(want), len(got))


def make_add(rng: np.random.Generator) -> tuple[str, str, str]:
    """``add 12 30 =``: chosen the sum, rejected a sum off by 1 to 9."""
    a, b = (int(x) for x in rng.integers(0, 50, size=2))
    off = int(rng.integers(1, 10)) * (1 if rng.random() < 0.5 or a + b < 10 else -1)
    return f"add {a} {b} =", f" {a + b}", f" {a + b + off}"


def reward_add(prompt: str, completion: str) -> float:
    """``1 / (1 + |answer - sum|)`` for the completion's first integer; 0 without one."""
    terms, got = _ints(prompt), _ints(completion)
    if not got:
        return 0.0
    return 1.0 / (1.0 + abs(got[0] - sum(terms)))


def make_end(rng: np.random.Generator) -> tuple[str, str, str]:
    """``end with fox: cat owl``: continue the list; chosen ends with the word, rejected not."""
    target, a, b, c = (str(w) for w in rng.choice(WORDS, size=4))
    other = target
    while other == target:
        other = str(rng.choice(WORDS))
    return f"end with {target}: {a} {b}", f" {c} {target}", f" {c} {other}"


def reward_end(prompt: str, completion: str) -> float:
    """1 if the completion's last word is the word after ``end with``, else 0."""
    match = re.match(r"end with (\S+):", prompt)
    words = completion.split()
    return float(bool(match and words and words[-1] == match.group(1)))


TASKS: dict[str, Callable[[np.random.Generator], tuple[str, str, str]]] = {
    "sort": make_sort,
    "add": make_add,
    "end": make_end,
}
REWARD_FNS: dict[str, Callable[[str, str], float]] = {
    "sort": reward_sort,
    "add": reward_add,
    "end": reward_end,
}


def task_of(prompt: str) -> str:
    """The synthetic task a prompt was made by (for :data:`REWARD_FNS`)."""
    for name, start in (("sort", "sort:"), ("add", "add "), ("end", "end with ")):
        if prompt.startswith(start):
            return name
    raise DataError(f"prompt {prompt[:40]!r} is not from a synthetic preference task")


def reward(prompt: str, completion: str) -> float:
    """The reward of ``completion`` for a prompt of any synthetic task."""
    return REWARD_FNS[task_of(prompt)](prompt, completion)


def parse_tasks(dataset: str) -> tuple[str, ...]:
    """The task mix of ``synthetic_preferences[:task,task...]`` (all tasks when none named)."""
    _, _, spec = dataset.partition(":")
    names = tuple(t.strip() for t in spec.split(",") if t.strip()) or tuple(TASKS)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise DataError(
            f"data.dataset={dataset!r} names unknown task {unknown[0]!r}; use "
            f"{SYNTHETIC}:<tasks> with tasks from {', '.join(TASKS)}"
        )
    return names


@functools.lru_cache(maxsize=8)
def synthetic_preferences(
    split: str, tasks: tuple[str, ...] = tuple(TASKS), *, size: int | None = None, seed: int = 0
) -> tuple[dict, ...]:
    """``size`` records of ``split`` (``train`` or ``validation``), the tasks taking turns.

    Problems are drawn from one seeded stream; a prompt goes to ``validation`` when its hash
    says so (one in :data:`VALIDATION_SHARE`), so the splits never share a prompt. Cached: the
    objective's config check and its input read the same records.
    """
    if split not in SYNTHETIC_SIZES:
        raise DataError(f"split {split!r} of {SYNTHETIC}; use train or validation")
    size = SYNTHETIC_SIZES[split] if size is None else size
    rng = np.random.default_rng(seed)
    records: list[dict] = []
    for i in range(1000 * size):
        if len(records) == size:
            return tuple(records)
        prompt, chosen, rejected = TASKS[tasks[i % len(tasks)]](rng)
        if held_out(prompt, 1 / VALIDATION_SHARE) == (split == "validation"):
            records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    raise DataError(f"{SYNTHETIC} could not draw {size} {split} records of tasks {tasks}")


def load_preferences(dataset: str, split: str, eval_fraction: float = 0.1) -> Sequence[dict]:
    """The preference records of ``split`` of ``data.dataset`` (synthetic, or JSONL)."""
    if dataset == SYNTHETIC or dataset.startswith(SYNTHETIC + ":"):
        return synthetic_preferences(split, parse_tasks(dataset))
    return load_jsonl(dataset, split, eval_fraction)
