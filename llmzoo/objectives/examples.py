"""Training examples per objective: packed token rows in, model batches out (host NumPy).

The data pipeline (:mod:`llmzoo.data.pipeline`) packs tokenized documents into rows of
``row_len`` tokens (``tokens``, ``tokens_segment_ids``, ``tokens_positions``, each ``[L]``) and
hands each row to one of the builders below; random builders get a ``np.random.Generator`` that
Grain seeds from the pipeline seed and the element count, so a resumed run draws the same
corruption. Each builder returns the model kind's inputs plus ``targets`` and ``loss_mask`` for
:func:`llmzoo.objectives.losses.token_loss`.
"""

from __future__ import annotations

import numpy as np

from llmzoo.config import TrainConfig
from llmzoo.data.pipeline import lm_example
from llmzoo.errors import ConfigError
from llmzoo.objectives.denoising import denoise_example
from llmzoo.objectives.masking import mask_tokens, word_starts_from_pieces
from llmzoo.objectives.spans import span_corrupt_batch, span_corruption_lengths

Row = dict[str, np.ndarray]


def _shift_right(targets: np.ndarray, start_id: int) -> np.ndarray:
    """Decoder inputs: ``[start_id, targets[0], ..., targets[-2]]``."""
    return np.concatenate([[start_id], targets[:-1]]).astype(np.int32)


class CausalLmExamples:
    """Next-token prediction: a row of T + 1 tokens gives ``tokens = row[:-1]`` and
    ``targets = row[1:]``; the loss skips padding and the step across a document boundary."""

    random = False

    def __init__(self, seq_len: int):
        self.row_len = seq_len + 1

    def __call__(self, row: Row) -> Row:
        return lm_example(row)


class MlmExamples:
    """BERT masked LM (Devlin et al., 2019) on packed rows of T tokens: each document is a
    segment that attends only to itself; selected positions are the targets."""

    random = True

    def __init__(self, seq_len: int, *, mask_kwargs: dict, word_start_table=None):
        self.row_len = seq_len
        self.mask_kwargs = mask_kwargs
        self.word_start_table = word_start_table

    def __call__(self, row: Row, rng: np.random.Generator) -> Row:
        tokens, seg, pos = row["tokens"], row["tokens_segment_ids"], row["tokens_positions"]
        starts = None
        if self.word_start_table is not None:
            starts = self.word_start_table[tokens] | (pos == 0)
        inputs, targets, loss_mask = mask_tokens(
            tokens, rng, word_starts=starts, valid=seg != 0, **self.mask_kwargs
        )
        return {
            "tokens": inputs.astype(np.int32),
            "targets": targets.astype(np.int32),
            "loss_mask": loss_mask.astype(np.float32),
            "segment_ids": seg,
            "positions": pos,
        }


class SpanCorruptionExamples:
    """T5 span corruption (Raffel et al., 2020): a row of raw tokens becomes encoder inputs of
    exactly S tokens (spans replaced by sentinels) and decoder targets (sentinel + span)."""

    random = True

    def __init__(
        self, seq_len: int, *, noise_density, mean_span_length, sentinel_ids, eos_id, start_id
    ):
        self.row_len, self.targets_len = span_corruption_lengths(
            seq_len, noise_density, mean_span_length
        )
        self.seq_len = seq_len
        self.kwargs = dict(
            noise_density=noise_density,
            mean_span_length=mean_span_length,
            sentinel_ids=sentinel_ids,
            eos_id=eos_id,
        )
        self.start_id = start_id

    def __call__(self, row: Row, rng: np.random.Generator) -> Row:
        real = row["tokens"][row["tokens_segment_ids"] != 0]
        out = span_corrupt_batch(
            [real], rng, inputs_length=self.seq_len, targets_length=self.targets_len, **self.kwargs
        )
        targets = out["targets"][0]
        return {
            "inputs": out["inputs"][0],
            "input_mask": out["input_mask"][0],
            "decoder_inputs": _shift_right(targets, self.start_id),
            "targets": targets,
            "loss_mask": out["target_mask"][0].astype(np.float32),
        }


class DenoisingExamples:
    """BART denoising (Lewis et al., 2020): text infilling (and sentence permutation) of a row of
    T tokens; the decoder reconstructs the original row."""

    random = True

    def __init__(self, seq_len: int, *, denoise_kwargs: dict, start_id: int):
        self.row_len = seq_len
        self.kwargs = denoise_kwargs
        self.start_id = start_id

    def __call__(self, row: Row, rng: np.random.Generator) -> Row:
        real = row["tokens"][row["tokens_segment_ids"] != 0]
        n = self.row_len
        inputs, _ = denoise_example(real, rng, **self.kwargs) if len(real) else (real, real)
        inputs = np.asarray(inputs, np.int32)[:n]
        targets = np.zeros(n, np.int32)
        targets[: len(real)] = real
        return {
            "inputs": np.pad(inputs, (0, n - len(inputs))),
            "input_mask": (np.arange(n) < len(inputs)).astype(np.int32),
            "decoder_inputs": _shift_right(targets, self.start_id),
            "targets": targets,
            "loss_mask": (np.arange(n) < len(real)).astype(np.float32),
        }


def _extra_ids(tokenizer, model_vocab: int, count: int, what: str) -> list[int]:
    """``count`` ids past the tokenizer's vocabulary, from the top of the model's (as T5 places
    its sentinels); an error names the vocab size that makes room."""
    ids = [model_vocab - 1 - k for k in range(count)]
    if count and ids[-1] < tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size={model_vocab} leaves no room for {count} {what} past the "
            f"tokenizer's {tokenizer.vocab_size} tokens; set model.vocab_size>="
            f"{tokenizer.vocab_size + count}"
        )
    return ids


def _mask_id(tokenizer, model_vocab: int) -> int:
    tid = getattr(tokenizer, "mask_id", -1)
    return tid if tid >= 0 else _extra_ids(tokenizer, model_vocab, 1, "mask token")[0]


def _specials(tokenizer) -> tuple[int, ...]:
    ids = (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
    return tuple(sorted({i for i in ids if i is not None and i >= 0}))


def _word_start_table(tokenizer) -> np.ndarray:
    """``[V]`` bool: whether each id's piece starts a word (id 0, the pad, counts as a start)."""
    return word_starts_from_pieces([tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)])


def _sentence_ends(tokenizer) -> tuple[int, ...]:
    ends = (".", "!", "?", ".\n")
    return tuple(
        i for i in range(tokenizer.vocab_size) if tokenizer.decode([i]).rstrip().endswith(ends)
    )


def make_examples(cfg: TrainConfig, tokenizer):
    """The example builder of ``cfg.objective`` for ``cfg.model`` and ``tokenizer``.

    Raises:
        ConfigError: the model's vocabulary has no room for the mask token or sentinels.
    """
    o, m, t = cfg.objective, cfg.model, cfg.seq_len
    if o.name in ("causal_lm", "distill"):  # a distilled student learns the next tokens too
        return CausalLmExamples(t)
    if o.name == "mlm":
        mask_kwargs = dict(
            mask_prob=o.mask_prob,
            mask_id=_mask_id(tokenizer, m.vocab_size),
            vocab_size=tokenizer.vocab_size,
            special_ids=_specials(tokenizer),
        )
        table = _word_start_table(tokenizer) if o.whole_word else None
        return MlmExamples(t, mask_kwargs=mask_kwargs, word_start_table=table)
    if o.name == "span_corruption":
        row_len, _ = span_corruption_lengths(t, o.noise_density, o.mean_span_length)
        n_spans = max(1, round(round(row_len * o.noise_density) / o.mean_span_length))
        return SpanCorruptionExamples(
            t,
            noise_density=o.noise_density,
            mean_span_length=o.mean_span_length,
            sentinel_ids=_extra_ids(tokenizer, m.vocab_size, n_spans, "sentinels"),
            eos_id=tokenizer.eos_id,
            start_id=m.decoder_start_id,
        )
    denoise_kwargs = dict(
        mask_ratio=o.mask_ratio,
        poisson_lambda=o.poisson_lambda,
        mask_id=_mask_id(tokenizer, m.vocab_size),
        sentence_end_ids=_sentence_ends(tokenizer) if o.permute_sentences else None,
        permute=o.permute_sentences,
    )
    return DenoisingExamples(t, denoise_kwargs=denoise_kwargs, start_id=m.decoder_start_id)
