"""SentencePiece ``tokenizer.model`` -> Hugging Face ``tokenizer.json`` (``convert --to-hf``).

The exported files must load in ``AutoTokenizer`` and encode and decode like llmzoo's tokenizer.
Both model types are trained tiny on the pydoc corpus. BPE ids are identical everywhere; unigram
ids differ only where two segmentations have exactly the same score (see
:mod:`llmzoo.hf.tokenizer_export`), which is checked as such.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections import Counter

import pytest

from llmzoo.data.pydoc_corpus import pydoc_documents
from llmzoo.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_tokenizer
from llmzoo.errors import DataError
from llmzoo.hf import load_tokenizer
from llmzoo.hf.tokenizer_export import (
    export_sentencepiece,
    read_sentencepiece,
    sentencepiece_to_tokenizer,
)

transformers = pytest.importorskip("transformers")

VOCAB = 1000
TEXTS = [
    "The list",
    "The quick brown fox jumps over the lazy dog. It was 1999, and 42 people watched.",
    "def add(a, b):\n    return a + b\n\n\nclass Point:\n\tx: int = 0\n\ty: int = 0\n",
    "if x  ==  y:   # three spaces\n        print( 'yes' )\r\n",
    "   leading spaces, and trailing ones   ",
    " x",
    "\n\nstarts with blank lines",
    "Ünïcödé: Grüße, ça va? Ωμέγα ∑ ≠ ∞ — “quotes” 日本語のテキスト 한국어",
    "emoji 🎉👍🏽🇫🇷 and a family 👨\u200d👩\u200d👧",
    "<s> </s> <pad> <unk> <0x41> are text here",
    "\x00\x01 control \x7f chars",
    "",
    " ",
    "a",
]


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return list(pydoc_documents().values())


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def exported(request, docs, tmp_path_factory):
    """``(llmzoo tokenizer, AutoTokenizer, hf_dir)`` for a tiny model of each type."""
    root = tmp_path_factory.mktemp(f"sp_{request.param}")
    tok = train_tokenizer(docs, root / "sp", vocab_size=VOCAB, model_type=request.param)
    export_sentencepiece(tok.path, root / "hf")
    return tok, transformers.AutoTokenizer.from_pretrained(root / "hf"), root / "hf"


def _is_unigram(tok: Tokenizer) -> bool:
    return read_sentencepiece(tok.path).model_type == 1


def _tie(tok: Tokenizer, want: list[int], got: list[int]) -> bool:
    """Whether ``got`` is another segmentation of the text with exactly the same score as ``want``:
    the same pieces (so the same sum of scores) in another order."""
    return Counter(want) == Counter(got) and tok.decode(want) == tok.decode(got)


@pytest.mark.parametrize("text", TEXTS)
def test_varied_text_encodes_and_decodes_the_same(exported, text):
    tok, hf, _ = exported
    want = tok.encode(text)
    assert hf.encode(text, add_special_tokens=False) == want
    assert hf(text)["input_ids"] == want  # a decoder's tokenizer adds nothing by default
    assert hf.decode(want) == tok.decode(want) == text
    assert hf.decode([BOS_ID, *want, EOS_ID, PAD_ID], skip_special_tokens=True) == text


def test_byte_fallback_and_special_text_are_exercised(exported):
    tok, hf, _ = exported
    for text in TEXTS[7:9]:  # unicode outside the vocabulary, emoji: UTF-8 byte pieces
        assert any(4 <= i < 260 for i in tok.encode(text)), text
    assert not {BOS_ID, EOS_ID, PAD_ID, UNK_ID} & set(hf.encode(TEXTS[9]))


def test_pydoc_corpus_ids(exported, docs):
    """Every pydoc document: identical ids (BPE), or identical up to exact-score ties (unigram)."""
    tok, hf, _ = exported
    same = ties = chars = 0
    for doc in docs:
        want, got = tok.encode(doc), hf.encode(doc, add_special_tokens=False)
        assert hf.decode(got) == tok.decode(want) == doc
        if got == want:
            same += 1
            chars += len(doc)
        else:
            assert _is_unigram(tok) and _tie(tok, want, got), doc[:80]
            ties += 1
    print(f"\n{len(docs)} documents: {same} identical ({chars} characters), {ties} ties")
    assert same + ties == len(docs) == 249
    assert ties == 0 if not _is_unigram(tok) else ties < len(docs) // 10


def test_pydoc_slices_ids(exported, docs):
    """Random slices of the corpus: starts and ends inside words, lines and space runs."""
    import random

    tok, hf, _ = exported
    corpus, rng = "".join(docs), random.Random(0)
    texts = []
    for _ in range(2000):
        start = rng.randrange(len(corpus))
        texts.append(corpus[start : start + rng.randint(1, 200)])
    wants = [tok.encode(t) for t in texts]
    gots = [e.ids for e in hf.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    bad = [t for t, w, g in zip(texts, wants, gots, strict=True) if w != g and not _tie(tok, w, g)]
    assert not bad
    if not _is_unigram(tok):
        assert wants == gots


def test_special_tokens_and_files(exported):
    tok, hf, hf_dir = exported
    assert (hf.pad_token, hf.unk_token, hf.bos_token, hf.eos_token) == (
        "<pad>",
        "<unk>",
        "<s>",
        "</s>",
    )
    assert (hf.pad_token_id, hf.unk_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2, 3)
    assert len(hf) == tok.vocab_size
    assert hf.convert_ids_to_tokens(tok.encode("The list")) == [
        tok.id_to_piece(i) for i in tok.encode("The list")
    ]
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not config["add_bos_token"] and not config["add_eos_token"]
    special = json.loads((hf_dir / "special_tokens_map.json").read_text())
    assert special == {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
    }
    # The SentencePiece file goes along unchanged.
    assert (hf_dir / "tokenizer.model").read_bytes() == open(tok.path, "rb").read()
    assert Tokenizer.load(hf_dir / "tokenizer.model").encode(TEXTS[2]) == tok.encode(TEXTS[2])
    # save_pretrained keeps the behaviour.
    hf.save_pretrained(hf_dir.parent / "resaved")
    again = transformers.AutoTokenizer.from_pretrained(hf_dir.parent / "resaved")
    assert again(TEXTS[9])["input_ids"] == tok.encode(TEXTS[9])


def test_llmzoo_loads_the_export_like_the_original(exported):
    tok, _, hf_dir = exported
    loaded = load_tokenizer(hf_dir)  # tokenizer.json comes first
    assert loaded.path.endswith("tokenizer.json")
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (BOS_ID, EOS_ID, PAD_ID)
    assert loaded.vocab_size == tok.vocab_size
    for text in TEXTS:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode([BOS_ID, *tok.encode(text), EOS_ID]) == tok.decode(tok.encode(text))


@pytest.mark.parametrize(
    "kind, bos, eos", [("decoder", False, False), ("seq2seq", False, True), ("encoder", True, True)]
)
def test_add_special_tokens_follows_the_model_kind(exported, tmp_path, kind, bos, eos):
    tok, _, _ = exported
    export_sentencepiece(tok.path, tmp_path, kind=kind, max_length=64)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ids = tok.encode("The list")
    want = [BOS_ID] * bos + ids + [EOS_ID] * eos
    assert hf("The list")["input_ids"] == want
    assert hf.encode("The list", add_special_tokens=False) == ids
    assert load_tokenizer(tmp_path).encode("The list", add_special_tokens=True) == want
    assert hf.model_max_length == 64
    if kind == "encoder":  # llmzoo embed's input
        assert want == tok.encode("The list", add_special_tokens=True)


def test_read_sentencepiece_agrees_with_protobuf(exported):
    pb2 = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    tok, _, _ = exported
    proto = pb2.ModelProto()
    proto.ParseFromString(open(tok.path, "rb").read())
    sp = read_sentencepiece(tok.path)
    assert [p for p, _, _ in sp.pieces] == [p.piece for p in proto.pieces]
    assert [t for _, _, t in sp.pieces] == [p.type for p in proto.pieces]
    assert [s for _, s, _ in sp.pieces] == pytest.approx([p.score for p in proto.pieces], rel=1e-7)
    t, n = proto.trainer_spec, proto.normalizer_spec
    assert (sp.model_type, sp.byte_fallback) == (t.model_type, t.byte_fallback)
    assert (sp.unk_id, sp.bos_id, sp.eos_id, sp.pad_id) == (t.unk_id, t.bos_id, t.eos_id, t.pad_id)
    assert (sp.normalizer_name, sp.add_dummy_prefix, sp.remove_extra_whitespaces) == (
        n.name,
        n.add_dummy_prefix,
        n.remove_extra_whitespaces,
    )


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_default_sentencepiece_settings(docs, tmp_path, model_type):
    """A SentencePiece model with the library's defaults (nmt_nfkc, dummy prefix, whitespace
    cleanup, no byte fallback, bos=1 eos=2 unk=0) converts too."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(docs[:120]),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=600,
        model_type=model_type,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    tok = sentencepiece_to_tokenizer(read_sentencepiece(tmp_path / "sp.model"))
    tok.encode_special_tokens = True
    llmzoo_tok = Tokenizer.load(tmp_path / "sp.model")
    for text in [*TEXTS, *docs[120:]]:
        want, got = sp.encode(text), tok.encode(text, add_special_tokens=False).ids
        assert got == want or (model_type == "unigram" and _tie(llmzoo_tok, want, got)), text
        if 0 not in want:  # SentencePiece writes unknown pieces as ' ⁇ '
            assert tok.decode(got) == sp.decode(want)


def test_unsupported_models_keep_tokenizer_model_only(docs, tmp_path):
    import jax
    import sentencepiece as spm

    from llmzoo.hf.convert import convert_to_hf

    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(docs[:50]),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=400,
        user_defined_symbols=["<tool>"],
        minloglevel=2,
    )
    with pytest.raises(DataError, match="user-defined or unused pieces.*tokenizer.model"):
        export_sentencepiece(tmp_path / "sp.model", tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["tokenizer.model"]

    run = _run_dir(tmp_path / "run", str(tmp_path / "sp.model"), 400, jax.random.key(0))
    with pytest.warns(UserWarning, match="user-defined.*wrote tokenizer.model only"):
        convert_to_hf(run, str(tmp_path / "hf2"))
    names = {p.name for p in (tmp_path / "hf2").iterdir()}
    assert "tokenizer.model" in names and "tokenizer.json" not in names

    (tmp_path / "junk.model").write_bytes(b"")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        read_sentencepiece(tmp_path / "junk.model")


def _run_dir(path, tokenizer: str, vocab_size: int, key) -> str:
    """A params-only run of a one-layer llama-tiny decoder with the given tokenizer file."""
    from llmzoo.models import decoder
    from llmzoo.presets import get_model_preset, train_config_for
    from llmzoo.run_dir import write_run

    model = dataclasses.replace(get_model_preset("llama-tiny"), vocab_size=vocab_size, n_layers=1)
    write_run(str(path), train_config_for(model), decoder.init(key, model), tokenizer)
    return str(path)


def test_convert_run_to_hf_end_to_end(exported, tmp_path):
    """``llmzoo convert --run R --to-hf DIR`` on a run trained with a SentencePiece tokenizer."""
    import jax
    import numpy as np
    import torch

    from llmzoo.cli import main
    from llmzoo.run_dir import read_config

    tok, _, _ = exported
    run = _run_dir(tmp_path / "run", tok.path, tok.vocab_size, jax.random.key(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a supported model converts silently
        assert main(["convert", "--run", run, "--to-hf", str(tmp_path / "hf")]) == 0
    hf_dir = tmp_path / "hf"
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= {
        p.name for p in hf_dir.iterdir()
    }
    hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert isinstance(hf, transformers.PreTrainedTokenizerFast)
    for text in TEXTS:
        assert hf(text)["input_ids"] == tok.encode(text)
        assert hf.decode(tok.encode(text)) == text
    assert hf.decode(hf("The list")["input_ids"]) == "The list"  # the issue: not 'The▁list'
    assert hf.model_max_length == read_config(run).model.max_seq_len

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    assert (hf_model.config.bos_token_id, hf_model.config.eos_token_id) == (BOS_ID, EOS_ID)
    batch = hf(["The list", "def f(x):\n    return x"], return_tensors="pt", padding=True)
    assert batch["input_ids"].shape[0] == 2 and (batch["input_ids"] == PAD_ID).any()
    with torch.no_grad():
        logits = hf_model(**batch).logits
    assert logits.shape[-1] == tok.vocab_size and np.isfinite(logits.numpy()).all()
