"""``llmzoo convert``: Hugging Face checkpoint directory <-> llmzoo run directory.

A converted run directory is what ``llmzoo train`` writes, with a params-only checkpoint at step 0
(see :mod:`llmzoo.run_dir`), so ``llmzoo generate --run`` and ``init_from=`` work on it.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

from llmzoo.compress import dequantize_params
from llmzoo.errors import DataError
from llmzoo.hf import checkpoint as hf_checkpoint
from llmzoo.hf.tokenizer import find_tokenizer_file, load_tokenizer
from llmzoo.hf.tokenizer_export import export_sentencepiece
from llmzoo.presets import train_config_for
from llmzoo.run_dir import check_empty, read_run, write_run


def convert_from_hf(hf_dir: str, run_dir: str, *, force: bool = False) -> str:
    """Converts a Hugging Face checkpoint directory into an llmzoo run directory.

    The run's ``config.yaml`` is the ``tiny`` training preset with the checkpoint's model config
    and its kind's default objective (``run_dir`` set; ``data.tokenizer`` is the copied tokenizer
    when the checkpoint has one). The run is written whole or not at all.

    Args:
        hf_dir: the Hugging Face checkpoint directory.
        run_dir: the run directory to create; it must be absent or empty unless ``force``.
        force: replace an existing run directory.

    Returns:
        ``run_dir``.

    Raises:
        CheckpointError: ``run_dir`` is not empty and ``force`` is not set (checked before
            anything is read or written), or the checkpoint cannot be read.
    """
    check_empty(run_dir, force=force)
    model_cfg, params = hf_checkpoint.load(hf_dir)
    base = train_config_for(model_cfg)
    data = base.data
    tok_src = find_tokenizer_file(hf_dir) if os.path.isdir(hf_dir) else None
    if tok_src is not None:
        tok_dest = os.path.join(run_dir, os.path.basename(tok_src))
        data = dataclasses.replace(
            data,
            tokenizer=tok_dest,
            train_tokenizer=False,
            vocab_size=model_cfg.vocab_size,
        )
    train_cfg = dataclasses.replace(base, data=data, run_dir=run_dir, init_from=None)
    sides = _tokenizer_side_files(hf_dir) if tok_src is not None else ()
    write_run(run_dir, train_cfg, params, tokenizer_src=tok_src, force=force, extra_files=sides)
    return run_dir


def _tokenizer_side_files(folder: str) -> tuple[str, ...]:
    """``tokenizer.json``'s special tokens (and its chat template) live in these side files;
    keep them with it."""
    names = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
    return tuple(os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n)))


def _copy_tokenizer_metadata(src_dir: str, dest_dir: str) -> None:
    import shutil

    for src in _tokenizer_side_files(src_dir):
        shutil.copyfile(src, os.path.join(dest_dir, os.path.basename(src)))


def convert_to_hf(run_dir: str, hf_dir: str, *, dtype=None) -> str:
    """Writes the newest params of an llmzoo run directory as a Hugging Face checkpoint.

    The tokenizer stored in the run (if any) goes along, loadable by ``AutoTokenizer``: a
    ``tokenizer.json`` is copied with its side files; a SentencePiece ``tokenizer.model`` is copied
    and converted to ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``
    (see :mod:`llmzoo.hf.tokenizer_export`; a model that ``tokenizers`` cannot reproduce is only
    copied, with a warning). bos/eos/pad ids from the tokenizer go into ``config.json``.

    A quantized run (``llmzoo quantize``) is exported dequantized, with a warning.

    Returns:
        ``hf_dir``.
    """
    import shutil

    train_cfg, params, tok_path = read_run(run_dir)
    if train_cfg.quant is not None:  # Hugging Face's layout holds float weights: scale * q
        warnings.warn(
            f"{run_dir!r} is {train_cfg.quant.method}-quantized; exporting its dequantized "
            "weights (float, with the quantization error)",
            stacklevel=2,
        )
        params = dequantize_params(params)
    extra = {}
    if tok_path is not None:
        tok = load_tokenizer(tok_path)
        for kind in ("bos", "eos", "pad"):
            tid = getattr(tok, f"{kind}_id")
            extra[f"{kind}_token_id"] = tid if tid is not None and tid >= 0 else None
    hf_checkpoint.save(hf_dir, train_cfg.model, params, dtype=dtype, extra_config=extra)
    if tok_path is not None and tok_path.endswith(".model"):
        try:
            export_sentencepiece(
                tok_path,
                hf_dir,
                kind=train_cfg.model.kind,
                max_length=getattr(train_cfg.model, "max_seq_len", None),
            )
        except DataError as e:
            warnings.warn(f"{e}; wrote tokenizer.model only", stacklevel=2)
            shutil.copyfile(tok_path, os.path.join(hf_dir, "tokenizer.model"))
    elif tok_path is not None:
        shutil.copyfile(tok_path, os.path.join(hf_dir, os.path.basename(tok_path)))
        _copy_tokenizer_metadata(os.path.dirname(tok_path), hf_dir)
    return hf_dir
