"""Record TorchServe 0.12.0's answers for its default `text_classifier` handler, served with a
vocabulary saved by torchtext itself (tests/data/torchtext/source_vocab.pt).

    TORCHSERVE_BIN=/path/to/venv/bin /path/to/venv/bin/python -m \
        tests.torchserve.record_text_classifier

The venv holds torchserve and torch-model-archiver 0.12.0, torchtext 0.18.0 with the torch it
is built for (2.3.0), and captum (TorchServe's text handlers import it): TorchServe's text
handlers need torchtext, which does not load beside the torch the tests run. Writes
tests/data/torchserve_answers/text_classifier.json: predictions (HTML, contractions, accents,
punctuation, bigrams, unknown words, text that is not UTF-8) and explanations (Captum's
LayerIntegratedGradients over the embedding). tests/integration/test_text_classifier_answers.py
builds the same archive with `build_archive` and compares zerobatch's answers with these.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from tests.support.torchserve_answers import TORCHSERVE_BIN, TorchServe, save

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = os.path.join(ROOT, "tests", "data", "torchtext", "source_vocab.pt")
MODEL_NAME = "sentiment"
VOCAB_SIZE = 28
#: an EmbeddingBag and a linear layer, as the example's model; `embedding` is the layer
#: TorchServe's text handler explains
MODEL = '''import torch


class Sentiment(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.EmbeddingBag(28, 4, mode="mean")
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))
'''
LABELS = {"0": "negative", "1": "positive"}
TEXT = {"content-type": "text/plain"}
#: case -> (path, body, headers)
REQUESTS = {
    "plain": ("predictions", b"a good movie", TEXT),
    "html_and_punctuation": ("predictions", b"<p>A <b>GOOD</b> movie!</p>", TEXT),
    "contraction": ("predictions", b"It isn't good at all", TEXT),
    "accents": ("predictions", "Caf\u00e9 acting: g\u00f3od and b\u00e0d".encode(), TEXT),
    "bigrams": ("predictions", b"not a bad plot, not good", TEXT),
    "unknown_words": ("predictions", b"never heard of it", TEXT),
    "octets": ("predictions", b"bad acting", {"content-type": "application/octet-stream"}),
    "form_data": ("predictions", b"data=a+bad+one",
                  {"content-type": "application/x-www-form-urlencoded"}),
    "not_utf8": ("predictions", b"\xff\xfe bad", TEXT),
    "explain": ("explanations", b"a good movie, not bad", TEXT),
    "explain_unknown_words": ("explanations", b"never heard", TEXT),
}


def weights():
    """The model's state dict: exact binary fractions, the same on every torch."""
    import torch

    embedding = torch.tensor([[((row * 4 + col) % 7 - 3) / 4 for col in range(4)]
                              for row in range(VOCAB_SIZE)])
    return {"embedding.weight": embedding,
            "fc.weight": torch.tensor([[0.5, -0.25, 0.75, -1.0], [-0.5, 1.0, 0.25, 0.5]]),
            "fc.bias": torch.tensor([0.125, -0.125])}


def build_archive(export_dir: str, archiver: str) -> str:
    """Pack MODEL_NAME (MODEL with `weights()`, the torchtext vocabulary, LABELS and the
    `text_classifier` handler) with the torch-model-archiver at `archiver` into export_dir;
    the archive's file name."""
    import subprocess

    import torch

    with tempfile.TemporaryDirectory(prefix="sentiment-src-") as source:
        model_file = os.path.join(source, "model.py")
        with open(model_file, "w") as out:
            out.write(MODEL)
        state = os.path.join(source, "model.pt")
        torch.save(weights(), state)
        labels = os.path.join(source, "index_to_name.json")
        with open(labels, "w") as out:
            json.dump(LABELS, out)
        subprocess.run([archiver, "--model-name", MODEL_NAME, "--version", "1.0",
                        "--model-file", model_file, "--serialized-file", state,
                        "--handler", "text_classifier", "--export-path", export_dir,
                        "--extra-files", f"{VOCAB},{labels}", "--force"],
                       check=True, capture_output=True, timeout=120)
    return f"{MODEL_NAME}.mar"


def main() -> int:
    answers = {}
    with tempfile.TemporaryDirectory() as store:
        archive = build_archive(store, os.path.join(TORCHSERVE_BIN, "torch-model-archiver"))
        with TorchServe(store, {MODEL_NAME: archive}) as torchserve:
            for case, (route, body, headers) in REQUESTS.items():
                answers[case] = torchserve.record("POST", f"/{route}/{MODEL_NAME}", body,
                                                  headers)
    for case, answer in answers.items():
        print(case, answer["status"], answer["body_b64"][:60])
    print(save("text_classifier", answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
