"""`ts.torch_handler.text_classifier`: class probabilities for each text.

Each request's body (text, or bytes decoded as UTF-8) is cleaned and tokenized as TorchServe
does, extended with its 2-grams (`ngrams`), and mapped to token ids (see `text_handler`).
The model is called as TorchServe calls it, EmbeddingBag style: `model(ids, offsets)` with
the ids of the whole batch concatenated and one offset per text (TorchServe runs only the
first request of a batch; we run them all). Each answer is a {label: probability} dict of
every class, labels from `index_to_name.json` else the class index as a string. A body that
is not text fails the request as TorchServe's decode error does (503 "Prediction failed").
"""

from __future__ import annotations

from typing import Any

import torch

from zerobatch.worker.compat.util import map_class_to_label
from zerobatch.worker.handlers.text_handler import TextHandler, ngrams_iterator


class UnreadableText(ValueError):
    """A request's body is not text: answered as any handler's failure (TorchServe: 503)."""


class TextClassifier(TextHandler):
    ngrams = 2

    def preprocess(self, data: list) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
        ids: list[int] = []
        offsets: list[int] = []
        all_tokens: list[list[str]] = []
        for index, row in enumerate(data):
            text = row.get("data") or row.get("body") or ""
            if isinstance(text, (bytes, bytearray, memoryview)):
                try:
                    text = bytes(text).decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise UnreadableText(f"request {index}: the body is not UTF-8 text"
                                         ) from exc
            if not isinstance(text, str):
                raise UnreadableText(f"request {index}: expected text, got "
                                     f"{type(text).__name__}")
            tokens = self.clean_tokens(text)
            offsets.append(len(ids))
            ids.extend(self.token_ids(ngrams_iterator(tokens, self.ngrams)))
            all_tokens.append(tokens)
        return (torch.as_tensor(ids, dtype=torch.long, device=self.device),
                torch.as_tensor(offsets, dtype=torch.long, device=self.device), all_tokens)

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        ids, offsets = data[0], data[1]
        return super().inference(ids, offsets, *args, **kwargs)

    def postprocess(self, data: Any) -> list:
        return map_class_to_label(torch.softmax(data, dim=1).tolist(), self.mapping)
