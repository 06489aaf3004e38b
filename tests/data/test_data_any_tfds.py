"""Any TFDS text dataset works by name and feature key, not only pydoc_topics.

A user's machine would download e.g. lm1b; here a small dataset of another name and text key is
prepared as array_record first, then read through the same generic ``tfds.data_source`` path.
"""

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from llmzoo.data import build_source, make_lm_pipeline


class LlmzooTinyCorpusForTests(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("0.1.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return epath.Path(__file__)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"content": tfds.features.Text(), "label": tfds.features.Scalar(dtype=np.int64)}
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30), "test": self._generate_examples(5, 100)}

    def _generate_examples(self, n, offset=0):
        for i in range(n):
            yield str(i), {"content": f"document {i + offset}: " + "word " * (i + 3), "label": i}


def test_generic_tfds_name_and_text_key(tmp_path, tokenizer):
    LlmzooTinyCorpusForTests(
        data_dir=str(tmp_path), file_format="array_record"
    ).download_and_prepare()
    src = build_source(
        "llmzoo_tiny_corpus_for_tests", "test", data_dir=str(tmp_path), text_key="content"
    )
    assert len(src) == 5
    assert sorted(src[i] for i in range(5))[0].startswith("document 100: word word word")
    train = build_source(
        "llmzoo_tiny_corpus_for_tests", "train[:50%]", data_dir=str(tmp_path), text_key="content"
    )
    assert len(train) == 15
    batch = next(make_lm_pipeline(train, tokenizer, seq_len=16, batch_size=2, seed=0))
    assert batch["tokens"].shape == (2, 16)
    first = batch["tokens"][0][batch["segment_ids"][0] == 1].tolist()
    text = tokenizer.decode([t for t in first if t != tokenizer.eos_id])
    assert any(train[i].startswith(text) for i in range(len(train))), text
