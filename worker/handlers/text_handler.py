"""`ts.torch_handler.text_handler`: TorchServe's text cleanup, and token ids without torchtext.

The cleanup is TorchServe's: strip HTML tags and entities, lowercase, expand contractions
(rules for the common English forms rather than TorchServe's table), strip accents, strip
punctuation, split on whitespace. `ngrams_iterator` is torchtext's.

Token ids (`token_ids`) come from `self.source_vocab`, the model directory's vocabulary as
TorchServe's archives ship it (`source_vocab.pt`, a torchtext Vocab read without torchtext, or
`source_vocab.json`: worker/handlers/vocab.py); without one, from feature hashing: crc32 of
the token modulo `vocab_size`, taken from `handler: {vocab_size: N}` in `model-config.yaml`,
else the row count of the model's first parameter whose name contains "embedding". Hashing
needs a model trained the same way.

For explanations, `self.lig` is TorchServe's Captum LayerIntegratedGradients over
`self.model.embedding`, built at the first read rather than in `initialize` (Captum is
optional and slow to import: see `insights`); `summarize_attributions` and `get_word_token`
are TorchServe's helpers of the same names.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import zlib
from typing import Any, Iterable, Iterator

import torch

from zerobatch.worker.base_handler import BaseHandler
from zerobatch.worker.compat.util import CLEANUP_REGEX
from zerobatch.worker.handlers.insights import CaptumAttribution, layer_integrated_gradients
from zerobatch.worker.handlers.vocab import (
    UNKNOWN_TOKEN,
    VOCAB_JSON,
    VOCAB_PT,
    SourceVocab,
    load_vocab,
)

log = logging.getLogger(__name__)


_IRREGULAR = {"won't": "will not", "can't": "cannot", "shan't": "shall not",
              "ain't": "is not", "let's": "let us", "y'all": "you all"}
_IS_PRONOUNS = ("he", "she", "it", "that", "there", "what", "where", "who", "how", "here")
_CONTRACTION_RULES = [
    (re.compile(r"\b(" + "|".join(map(re.escape, _IRREGULAR)) + r")\b"),
     lambda m: _IRREGULAR[m.group(1)]),
    (re.compile(r"n't\b"), lambda m: " not"),
    (re.compile(r"'re\b"), lambda m: " are"),
    (re.compile(r"'ve\b"), lambda m: " have"),
    (re.compile(r"'ll\b"), lambda m: " will"),
    (re.compile(r"'d\b"), lambda m: " would"),
    (re.compile(r"\bi'm\b"), lambda m: "i am"),
    (re.compile(r"\b(" + "|".join(_IS_PRONOUNS) + r")'s\b"), lambda m: m.group(1) + " is"),
]
_PUNCTUATION = re.compile(r"[^\w\s]")


def ngrams_iterator(tokens: list[str], ngrams: int) -> Iterator[str]:
    """The tokens, then their 2-grams, ... up to `ngrams`, each joined by a space."""
    yield from tokens
    for n in range(2, ngrams + 1):
        for gram in zip(*(tokens[i:] for i in range(n)), strict=False):
            yield " ".join(gram)


class TextHandler(BaseHandler):
    """Base class of the text handlers: cleanup, tokens and token ids."""

    #: Captum's LayerIntegratedGradients over the model's `embedding`, built when first read
    lig = CaptumAttribution(layer_integrated_gradients)

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.source_vocab = self._load_vocab(self.model_dir)
        self.vocab_size = None if self.source_vocab is not None else self._hash_buckets()
        self.initialized = True

    # ---- TorchServe's cleanup steps, under its names
    def _remove_html_tags(self, text: str) -> str:
        return re.sub(CLEANUP_REGEX, "", text)

    def _expand_contractions(self, text: str) -> str:
        text = text.replace("\u2019", "'")
        for pattern, replace in _CONTRACTION_RULES:
            text = pattern.sub(replace, text)
        return text

    def _remove_accented_characters(self, text: str) -> str:
        return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")

    def _remove_punctuation(self, text: str) -> str:
        return _PUNCTUATION.sub("", text)

    def _tokenize(self, text: str) -> list[str]:
        return text.split()

    def clean_tokens(self, text: str) -> list[str]:
        """TorchServe's text classifier cleanup, start to end."""
        text = self._remove_html_tags(text).lower()
        text = self._expand_contractions(text)
        text = self._remove_accented_characters(text)
        return self._tokenize(self._remove_punctuation(text))

    def token_ids(self, tokens: Iterable[str]) -> list[int]:
        vocab = self.source_vocab
        if vocab is not None:
            unknown = getattr(vocab, "default_index", None)
            if unknown is None:
                unknown = vocab.get(UNKNOWN_TOKEN, 0)
            return [vocab.get(token, unknown) for token in tokens]
        return [zlib.crc32(token.encode("utf-8")) % self.vocab_size for token in tokens]

    # ---- TorchServe's explanation helpers
    def get_word_token(self, input_tokens: list[str]) -> list[str]:
        """The tokens without the "\u0120" space marker of byte-level BPE tokenizers."""
        return [token.replace("\u0120", "") for token in input_tokens]

    def summarize_attributions(self, attributions: Any) -> Any:
        """TorchServe's summary: a softmax over the attributions (on dim 0 for 1-D and 3-D
        tensors, else dim 1, where torch puts an implicit softmax), divided by the norm of
        their sums over the last dim."""
        dim = 0 if attributions.dim() in (0, 1, 3) else 1
        attributions = torch.softmax(attributions, dim=dim)
        return attributions / torch.norm(attributions.sum(dim=-1))

    # ---- loading
    def _load_vocab(self, model_dir: str) -> SourceVocab | None:
        return load_vocab(model_dir)

    def _hash_buckets(self) -> int:
        handler_config = self.model_yaml_config.get("handler")
        if isinstance(handler_config, dict) and handler_config.get("vocab_size"):
            return int(handler_config["vocab_size"])
        for name, parameter in self.model.named_parameters():
            if "embedding" in name and parameter.dim() == 2:
                log.info("no vocabulary: hashing tokens into %d buckets (%s)",
                         parameter.shape[0], name)
                return int(parameter.shape[0])
        raise ValueError(f"no {VOCAB_JSON} or {VOCAB_PT} in {self.model_dir}, no "
                         "handler.vocab_size in model-config.yaml, and no embedding parameter "
                         "in the model to size the token hashing")
