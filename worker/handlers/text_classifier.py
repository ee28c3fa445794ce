"""`ts.torch_handler.text_classifier`: class probabilities for each text.

Each request's body (text, or bytes decoded as UTF-8) is cleaned and tokenized as TorchServe
does, extended with its 2-grams (`ngrams`), and mapped to token ids (see `text_handler`).
The model is called as TorchServe calls it, EmbeddingBag style: `model(ids, offsets)` with
the ids of the whole batch concatenated and one offset per text (TorchServe runs only the
first request of a batch; we run them all). Each answer is a {label: probability} dict of
every class, labels from `index_to_name.json` else the class index as a string. A body that
is not text fails the request as TorchServe's decode error does (503 "Prediction failed").

An explanation (`get_insights`) is TorchServe's, for each text: Captum's Layer Integrated
Gradients (`self.lig`, 50 steps) of the model's output `target` over its `embedding` layer,
the text's token ids against a reference of as many id-0 tokens, called with the offsets [0];
the answer is {"importances": TorchServe's `summarize_attributions` of them, as nested lists,
"words": the cleaned tokens}. TorchServe explains only the first text of a batch; here each
text of the batch gets its own answer, all for the first request's target.
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

    def get_insights(self, text_preprocess: Any, _inputs: Any = None, target: Any = 0) -> list:
        """One {"importances", "words"} answer per text of the batch (see the module
        docstring)."""
        ids, offsets, all_tokens = text_preprocess
        ends = [*offsets.tolist()[1:], len(ids)]
        bag_offsets = torch.tensor([0], device=self.device)
        answers = []
        for start, end, tokens in zip(offsets.tolist(), ends, all_tokens, strict=True):
            text_ids = ids[start:end]
            reference = torch.zeros(end - start, dtype=torch.long,
                                    device=self.device).squeeze(0)
            attributions = self.lig.attribute(text_ids, reference,
                                              additional_forward_args=bag_offsets,
                                              return_convergence_delta=False, target=target)
            answers.append({"importances": self.summarize_attributions(attributions).tolist(),
                            "words": self.get_word_token(tokens)})
        return answers

    def postprocess(self, data: Any) -> list:
        return map_class_to_label(torch.softmax(data, dim=1).tolist(), self.mapping)
