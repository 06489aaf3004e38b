"""The Jinja chat template that ships with a Hugging Face tokenizer, if any."""

from __future__ import annotations

import json
import os


def find_chat_template(folder: str) -> str | None:
    """The chat template stored beside a tokenizer: ``chat_template.jinja``, else the
    ``chat_template`` of ``tokenizer_config.json`` (a string, or the one named ``default`` of a
    list of ``{name, template}``); None when there is none.
    """
    path = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    try:
        with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
            template = json.load(f).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template.strip() else None
