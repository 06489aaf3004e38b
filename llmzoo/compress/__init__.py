"""Compression of a model's params: weight-only quantization (:mod:`llmzoo.compress.quant`)
and pruning (:mod:`llmzoo.compress.prune`), as transforms of the param tree that leave the model
code as it is. ``llmzoo.compress_run`` writes compressed run directories."""

from llmzoo.compress.quant import (
    check_kind,
    dequantize_params,
    is_quant,
    param_bytes,
    quant_paths,
    quantize_params,
    quantized_abstract,
)

__all__ = [
    "check_kind",
    "dequantize_params",
    "is_quant",
    "param_bytes",
    "quant_paths",
    "quantize_params",
    "quantized_abstract",
]
