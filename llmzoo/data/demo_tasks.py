"""Two offline labeled tasks built from Python's bundled help topics (``pydoc_data.topics``).

``pydoc_topic_classes`` (sequence classification): each paragraph (a blank-line separated block
of at least :data:`MIN_PARAGRAPH_CHARS` characters, stripped) of a topic listed in
:data:`TOPIC_CLASSES` is labeled with that topic's class: ``statements`` (the language
reference's simple and compound statements), ``expressions`` (its expressions chapter),
``datamodel`` (its data model chapter) or ``stdtypes`` (the library's built-in types). Topics
listed in no class are not used.

``pydoc_code_tags`` (token classification, BIO): the code snippets of every topic (blocks whose
lines are all indented, dedented; interactive sessions keep only their ``>>>``/``...`` lines;
grammar rules with ``::=``, and blocks that :func:`ast.parse` rejects (indented prose, tables,
fragments), are skipped). The
words are the code's tokens from :mod:`tokenize` (comments, newlines and indentation dropped),
tagged exactly:

- ``KW``: a name in ``keyword.kwlist`` other than ``True``, ``False`` and ``None``;
- ``LIT``: a number, a string, ``True``, ``False`` or ``None``; adjacent strings (implicit
  concatenation, one literal to Python) form one entity, ``B-LIT I-LIT ...``;
- ``DEF``: the name right after ``def`` or ``class`` (the name being defined);
- ``BUILTIN``: any other name in ``dir(builtins)`` not starting with ``_`` (attributes after a
  ``.`` are not builtins);
- ``O``: everything else.

A snippet's logical lines are grouped into examples of at most :data:`MAX_WORDS` words (a longer
line is its own example). Both tasks split by a stable hash: an example id ``"<topic>/<index>"``
is validation when ``crc32(id) % 5 == 0`` (20%: these sets are small).
"""

from __future__ import annotations

import ast
import builtins
import functools
import io
import keyword
import re
import textwrap
import tokenize
import zlib
from pydoc_data.topics import topics as _TOPICS

from llmzoo.errors import DataError

MIN_PARAGRAPH_CHARS = 80
MAX_WORDS = 24
TOPIC_CLASSES: dict[str, tuple[str, ...]] = {
    "statements": ("assert", "assignment", "async", "augassign", "break", "class", "compound",
                   "continue", "del", "else", "for", "function", "global", "if", "import",
                   "nonlocal", "pass", "raise", "return", "try", "while", "with"),
    "expressions": ("atom-identifiers", "atom-literals", "attribute-references", "await",
                    "binary", "bitwise", "booleans", "calls", "comparisons", "conversions",
                    "dict", "exprlists", "in", "lambda", "lists", "operator-summary", "power",
                    "shifting", "slicings", "subscriptions", "unary", "yield"),
    "datamodel": ("attribute-access", "callable-types", "context-managers", "customization",
                  "numeric-types", "objects", "sequence-types", "specialnames", "types"),
    "stdtypes": ("bltin-code-objects", "bltin-ellipsis-object", "bltin-null-object",
                 "bltin-type-objects", "specialattrs", "string-methods", "truth",
                 "typesfunctions", "typesmapping", "typesmethods", "typesmodules", "typesseq",
                 "typesseq-mutable"),
}  # fmt: skip
LITERAL_NAMES = frozenset({"True", "False", "None"})
KEYWORDS = frozenset(keyword.kwlist) - LITERAL_NAMES
BUILTINS = frozenset(n for n in dir(builtins) if not n.startswith("_")) - frozenset(keyword.kwlist)
DROPPED = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT,
                     tokenize.ENDMARKER})  # fmt: skip
DEMO_TASKS = ("pydoc_topic_classes", "pydoc_code_tags")


def split_of(example_id: str) -> str:
    """``'validation'`` when ``crc32(example_id) % 5 == 0``, else ``'train'``."""
    return "validation" if zlib.crc32(example_id.encode("utf-8")) % 5 == 0 else "train"


def _paragraphs(topic: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", _TOPICS[topic])]


@functools.cache
def topic_class_records() -> tuple[dict, ...]:
    """Every ``{'id', 'text', 'label', 'split'}`` record of ``pydoc_topic_classes``."""
    out = []
    for label, keys in TOPIC_CLASSES.items():
        for topic in keys:
            for index, text in enumerate(_paragraphs(topic)):
                if len(text) >= MIN_PARAGRAPH_CHARS:
                    rid = f"{topic}/{index:03d}"
                    out.append({"id": rid, "text": text, "label": label, "split": split_of(rid)})
    return tuple(sorted(out, key=lambda r: r["id"]))


def code_snippets(text: str) -> list[str]:
    """The code blocks of a topic's text, dedented (see the module docstring)."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines or any(not line.startswith("   ") for line in lines) or "::=" in block:
            continue
        lines = textwrap.dedent("\n".join(lines)).split("\n")
        if any(line.startswith(">>>") for line in lines):
            lines = [line[4:] for line in lines if line.startswith((">>> ", "... "))]
        code = "\n".join(lines) + "\n"
        try:
            ast.parse(code)
        except (SyntaxError, ValueError):  # prose, a table or a fragment: not code
            continue
        out.append(code)
    return out


def tag_code(code: str) -> list[list[tuple[str, str]]]:
    """The ``(word, tag)`` pairs of each logical line of ``code``.

    Raises:
        tokenize.TokenError, SyntaxError: ``code`` is not tokenizable Python.
    """
    lines, line, prev = [], [], None
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.NEWLINE:
            lines, line = (lines + [line] if line else lines), []
            continue
        if tok.type in DROPPED:
            continue
        word = tok.string
        if tok.type in (tokenize.NUMBER, tokenize.STRING) or word in LITERAL_NAMES:
            joined = tok.type == tokenize.STRING and prev is not None and prev.type == tok.type
            tag = "I-LIT" if joined else "B-LIT"
        elif tok.type == tokenize.NAME and word in KEYWORDS:
            tag = "B-KW"
        elif tok.type == tokenize.NAME and prev is not None and prev.string in ("def", "class"):
            tag = "B-DEF"
        elif word in BUILTINS and not (prev is not None and prev.string == "."):
            tag = "B-BUILTIN"
        else:
            tag = "O"
        line.append((word, tag))
        prev = tok
    return lines + [line] if line else lines


def _group(lines: list[list[tuple[str, str]]]) -> list[list[tuple[str, str]]]:
    """Consecutive lines joined into groups of at most MAX_WORDS words."""
    groups, cur = [], []
    for line in lines:
        if cur and len(cur) + len(line) > MAX_WORDS:
            groups.append(cur)
            cur = []
        cur = cur + line
    return groups + [cur] if cur else groups


@functools.cache
def code_tag_records() -> tuple[dict, ...]:
    """Every ``{'id', 'tokens', 'tags', 'split'}`` record of ``pydoc_code_tags``."""
    out = []
    for topic in sorted(_TOPICS):
        index = 0
        for snippet in code_snippets(_TOPICS[topic]):
            try:
                lines = tag_code(snippet)
            except (tokenize.TokenError, SyntaxError):
                continue
            for group in _group(lines):
                rid = f"{topic}/{index:03d}"
                words, tags = [w for w, _ in group], [t for _, t in group]
                out.append({"id": rid, "tokens": words, "tags": tags, "split": split_of(rid)})
                index += 1
    return tuple(out)


def demo_records(name: str, split: str) -> list[dict]:
    """The records of one split (``train`` or ``validation``) of a demo task.

    Raises:
        DataError: an unknown task or split.
    """
    build = {"pydoc_topic_classes": topic_class_records, "pydoc_code_tags": code_tag_records}
    if name not in build:
        raise DataError(f"unknown demo task {name!r}; use one of {', '.join(DEMO_TASKS)}")
    if split not in ("train", "validation"):
        raise DataError(f"demo task {name!r} has no split {split!r}; use train or validation")
    return [r for r in build[name]() if r["split"] == split]
