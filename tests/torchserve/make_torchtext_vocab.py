"""Make tests/data/torchtext/source_vocab.pt the way pytorch/serve's text classification
example makes its archive's vocabulary, with torchtext itself:

    VENV/bin/python -m tests.torchserve.make_torchtext_vocab

VENV holds torchtext 0.18.0 (its last release) and the torch it is built for (2.3.0):
torchtext does not load beside the torch the tests run, which is why zerobatch reads the
file without it (worker/handlers/vocab.py). The vocabulary is built as the example's
train.py builds it: `build_vocab_from_iterator` over each text's words and bigrams
(`ngrams_iterator(tokenizer(text), 2)`), `specials=["<unk>"]`, then
`set_default_index(vocab["<unk>"])` and `torch.save(vocab, "source_vocab.pt")`. The tests
(tests/integration/test_text_vocab.py, tests/integration/test_text_classifier_answers.py)
read this file as it is; CI never runs this script.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torchtext
from torchtext.data.utils import get_tokenizer, ngrams_iterator
from torchtext.vocab import build_vocab_from_iterator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "tests", "data", "torchtext")
#: the training texts: a word's and a bigram's id follow their frequency here
CORPUS = [
    "a good movie",
    "a good movie , not a bad one",
    "not good at all",
    "bad acting and a bad plot",
    "good acting",
]


def main() -> int:
    tokenizer = get_tokenizer("basic_english")
    vocab = build_vocab_from_iterator(
        (ngrams_iterator(tokenizer(text), 2) for text in CORPUS), specials=["<unk>"])
    vocab.set_default_index(vocab["<unk>"])
    os.makedirs(OUT_DIR, exist_ok=True)
    torch.save(vocab, os.path.join(OUT_DIR, "source_vocab.pt"))
    with open(os.path.join(OUT_DIR, "source_vocab_itos.json"), "w") as f:
        json.dump({"torchtext": torchtext.__version__, "torch": torch.__version__,
                   "itos": vocab.get_itos(), "default_index": vocab.get_default_index()},
                  f, indent=1)
    print(len(vocab), "tokens, torchtext", torchtext.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
