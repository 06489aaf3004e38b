"""The HTML page: self-contained, with each PNG embedded byte for byte."""

import base64
import re

from llmzoo.viz import html

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))  # the bytes are copied, not decoded


def test_page_embeds_every_image(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(PNG + b"file")
    sections = [("attention <L0>", [str(path), PNG]), ("lens", [PNG], "top tokens: a & b")]
    out = html.write_page(str(tmp_path / "sub" / "index.html"), "inspect <run>", sections)
    text = open(out, encoding="utf-8").read()
    assert text.count('<img src="data:image/png;base64,') == 3
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert [base64.b64decode(e) for e in embedded] == [PNG + b"file", PNG, PNG]
    assert "http" not in text and "<link" not in text and "<script" not in text
    assert "<title>inspect &lt;run&gt;</title>" in text
    assert "<h2>attention &lt;L0&gt;</h2>" in text
    assert "<pre>top tokens: a &amp; b</pre>" in text
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
