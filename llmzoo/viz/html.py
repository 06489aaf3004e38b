"""One self-contained HTML page of figures: the PNGs are embedded as base64 ``data:`` URIs, and
the page links to nothing outside itself."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence

STYLE = (
    "body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
    "img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}"
    "pre{background:#f6f6f6;padding:0.8em;overflow-x:auto}"
)

# (heading, images, text): images are PNG paths or PNG bytes; text is shown preformatted
Section = tuple[str, Sequence[str | bytes]] | tuple[str, Sequence[str | bytes], str]


def png_data_uri(image: str | bytes) -> str:
    """``data:image/png;base64,...`` of a PNG file path or of PNG bytes."""
    if isinstance(image, str):
        with open(image, "rb") as f:
            image = f.read()
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")


def page(title: str, sections: Sequence[Section]) -> str:
    """A whole HTML document: the title, then per section its heading, its text (escaped,
    preformatted) and its images inline.

    Args:
        title: the page's title and top heading.
        sections: ``(heading, images)`` or ``(heading, images, text)`` tuples.
    """
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, images, *text in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        if text and text[0]:
            body.append(f"<pre>{html.escape(text[0])}</pre>")
        for image in images:
            alt = os.path.basename(image) if isinstance(image, str) else heading
            body.append(f'<img src="{png_data_uri(image)}" alt="{html.escape(alt)}">')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_page(path: str, title: str, sections: Sequence[Section]) -> str:
    """Writes :func:`page` to ``path`` (UTF-8, creating its folder) and returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page(title, sections))
    return path
