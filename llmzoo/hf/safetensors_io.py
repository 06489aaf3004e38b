"""Streaming safetensors reading and writing with plain file I/O (no torch, no mmap).

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor
name to ``{dtype, shape, data_offsets}``, then the raw little-endian bytes. Reading with
``readinto`` puts each tensor straight into a fresh numpy buffer, so nothing but the tensors we
hold stays resident (an mmap would keep every touched page of the file in the process's RSS).
``bfloat16`` and float8 come from ``ml_dtypes``, which numpy lacks.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable

import ml_dtypes
import numpy as np

from llmzoo.errors import CheckpointError

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def dtype_name(dtype) -> str:
    """The safetensors name (``'F32'``, ``'BF16'`` ...) of a numpy dtype."""
    try:
        return DTYPE_NAMES[np.dtype(dtype)]
    except KeyError:
        raise CheckpointError(
            f"dtype {np.dtype(dtype)} has no safetensors name; use float32, bfloat16 or float16"
        ) from None


def read_header(path: str) -> tuple[dict, int]:
    """Returns ``(header without __metadata__, byte offset of the data)`` of one file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path!r} is not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError, MemoryError, OverflowError):
        raise CheckpointError(
            f"{path!r} has a corrupt safetensors header; re-download or re-save it"
        ) from None
    header.pop("__metadata__", None)
    return header, 8 + n


class SafetensorsDir:
    """The tensors of a Hugging Face checkpoint directory, read one at a time.

    Finds ``model.safetensors.index.json`` (sharded), else ``model.safetensors``, else every
    ``*.safetensors`` file. Use as a context manager so open file handles get closed.
    """

    def __init__(self, path: str):
        self.path = path
        files = _weight_files(path)
        self._entries: dict[str, tuple[str, np.dtype, tuple[int, ...], int, int]] = {}
        self._handles: dict[str, object] = {}
        for file in files:
            header, start = read_header(os.path.join(path, file))
            for name, info in header.items():
                try:
                    dtype = DTYPES[info["dtype"]]
                except KeyError:
                    raise CheckpointError(
                        f"tensor {name!r} in {file} has unsupported dtype {info['dtype']!r}; "
                        f"llmzoo reads {', '.join(DTYPES)}"
                    ) from None
                shape = tuple(int(s) for s in info["shape"])
                begin, end = info["data_offsets"]
                if end - begin != math.prod(shape) * dtype.itemsize:
                    raise CheckpointError(
                        f"tensor {name!r} in {file} has {end - begin} bytes for shape {shape} "
                        f"{info['dtype']}; the file is corrupt, re-download or re-save it"
                    )
                self._entries[name] = (file, dtype, shape, start + begin, end - begin)

    def __enter__(self) -> SafetensorsDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][2]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][1]

    def read(self, name: str) -> np.ndarray:
        """Reads tensor ``name`` into a new numpy array of its stored dtype and shape."""
        file, dtype, shape, offset, nbytes = self._entries[name]
        f = self._handles.get(file)
        if f is None:
            f = self._handles[file] = open(os.path.join(self.path, file), "rb")  # noqa: SIM115
        out = np.empty(shape, dtype)
        f.seek(offset)
        if nbytes and f.readinto(out.reshape(-1).view(np.uint8)) != nbytes:
            raise CheckpointError(
                f"tensor {name!r} in {file} is truncated; the file is incomplete, re-download it"
            )
        return out


def _weight_files(path: str) -> list[str]:
    """The safetensors files of a checkpoint directory, checked to exist."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(
                f"{index!r} is not a safetensors index (no 'weight_map'); re-download it"
            ) from None
        files = sorted(set(weight_map.values()))
        for file in files:
            if not os.path.isfile(os.path.join(path, file)):
                tensor = next(n for n, v in weight_map.items() if v == file)
                raise CheckpointError(
                    f"{INDEX_FILE} in {path!r} maps tensor {tensor!r} to shard {file!r}, which "
                    "is missing; download every shard listed in the index"
                )
        return files
    if os.path.isfile(os.path.join(path, SINGLE_FILE)):
        return [SINGLE_FILE]
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if files:
        return files
    pickles = sorted(
        f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    )
    if pickles:
        raise CheckpointError(
            f"{path!r} holds only pickle weights ({', '.join(pickles)}); llmzoo loads safetensors "
            "only: convert with `AutoModelForCausalLM.from_pretrained(DIR)"
            ".save_pretrained(OUT, safe_serialization=True)` in transformers"
        )
    raise CheckpointError(
        f"{path!r} has no model.safetensors, {INDEX_FILE} or *.safetensors file; "
        "point to a Hugging Face checkpoint directory"
    )


TensorSource = tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]


def write_file(path: str, tensors: Iterable[TensorSource], metadata: dict | None = None) -> None:
    """Writes a safetensors file, producing each tensor only when its bytes are written.

    Args:
        path: the output file.
        tensors: ``(name, shape, dtype, produce)``; ``produce()`` returns the array (of that shape;
            cast to ``dtype`` here). Only one produced array is alive at a time.
        metadata: string-to-string ``__metadata__`` (e.g. ``{'format': 'pt'}``).
    """
    tensors = list(tensors)
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype, _ in tensors:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        header[name] = {
            "dtype": dtype_name(dtype),
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype, produce in tensors:
            arr = np.ascontiguousarray(np.asarray(produce()).astype(dtype, copy=False))
            if arr.shape != tuple(shape):
                raise CheckpointError(f"tensor {name!r} came out as {arr.shape}, not {shape}")
            f.write(arr.reshape(-1).view(np.uint8).data)
            del arr
