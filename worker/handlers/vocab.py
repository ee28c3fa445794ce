"""The vocabulary of TorchServe's text handlers, read as its archives ship it, without
torchtext: `load_vocab(model_dir)` gives a `SourceVocab` or None.

Read in this order from the model directory:

1. `source_vocab.json`: {token: id};
2. `source_vocab.pt`: a torchtext `Vocab` saved with `torch.save` (torchtext 0.12 to 0.18: an
   `nn.Module` around the C++ vocab, whose pickled state is its token list and default index;
   torchtext 0.10/0.11 under the name `torchtext.vocab.Vocab`; the pure-Python vocab of
   torchtext <= 0.9 and `torchtext.legacy`: `itos`, `stoi`, `unk_index`), or a plain
   {token: id} dict (`torch.save(vocab.get_stoi())`). It is read with
   `torch.load(weights_only=True)` and inert stand-ins for torchtext's classes, so torchtext
   need not be installed and the file can run no code. Anything else (a vocab saved as
   TorchScript, a pickle of other classes) is refused with the one-line command
   (`VOCAB_CONVERSION`) that turns it into `source_vocab.json` where torchtext is installed.

A `SourceVocab` is a {token: id} dict with torchtext's lookups (`vocab[token]`, `get_stoi`,
`get_itos`, `lookup_indices`, ...), so handlers written against torchtext's `Vocab` run on
it. An unknown token gets the vocab's default index: torchtext's own, else the id of "<unk>",
else 0 (torchtext raises for an unknown token of a vocab without a default index).
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Iterable

import torch

VOCAB_JSON = "source_vocab.json"
VOCAB_PT = "source_vocab.pt"
UNKNOWN_TOKEN = "<unk>"
#: run where torchtext is installed, it turns any source_vocab.pt into source_vocab.json
VOCAB_CONVERSION = (f"python -c \"import json, torch, torchtext; json.dump(torch.load("
                    f"'{VOCAB_PT}', weights_only=False).get_stoi(), open('{VOCAB_JSON}', "
                    f"'w'))\"")
#: the oldest state of torchtext's C++ vocab that torchtext itself still reads
TORCHTEXT_VOCAB_STATE_VERSION = "0.0.2"


def load_vocab(model_dir: str) -> SourceVocab | None:
    """The model directory's vocabulary (the module docstring), None when it has none;
    ValueError when it has one that cannot be read."""
    json_path = os.path.join(model_dir, VOCAB_JSON)
    if os.path.isfile(json_path):
        with open(json_path, encoding="utf-8") as f:
            return SourceVocab(_checked_vocab(json.load(f), VOCAB_JSON))
    pt_path = os.path.join(model_dir, VOCAB_PT)
    if not os.path.isfile(pt_path):
        return None
    return read_vocab_pt(pt_path)


def _checked_vocab(vocab: Any, name: str) -> dict[str, int]:
    if not isinstance(vocab, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
        raise ValueError(f"{name} must hold a {{token: id}} mapping of strings to integers")
    return vocab


class SourceVocab(dict):
    """{token: id} with the lookups of torchtext's `Vocab`; `vocab[token]` of an unknown token
    is `default_index` (a KeyError while that is None)."""

    def __init__(self, stoi: dict[str, int], default_index: int | None = None) -> None:
        super().__init__(stoi)
        self.default_index = stoi.get(UNKNOWN_TOKEN) if default_index is None else default_index

    def __missing__(self, token: str) -> int:
        if self.default_index is None:
            raise KeyError(f"token {token!r} is not in the vocabulary, which has no default "
                           "index")
        return self.default_index

    def __call__(self, tokens: list[str]) -> list[int]:
        return self.lookup_indices(tokens)

    forward = __call__

    def lookup_indices(self, tokens: Iterable[str]) -> list[int]:
        return [self[token] for token in tokens]

    def get_stoi(self) -> dict[str, int]:
        return dict(self)

    def get_itos(self) -> list[str]:
        return [token for token, _ in sorted(self.items(), key=lambda pair: pair[1])]

    def lookup_token(self, index: int) -> str:
        itos = self.get_itos()
        if not 0 <= index < len(itos):
            raise IndexError(f"index {index} is out of bounds for a vocab of {len(itos)}")
        return itos[index]

    def lookup_tokens(self, indices: Iterable[int]) -> list[str]:
        return [self.lookup_token(index) for index in indices]

    def get_default_index(self) -> int | None:
        return self.default_index

    def set_default_index(self, index: int | None) -> None:
        self.default_index = index


# ---- torchtext's pickles, read without torchtext

class _PickledCppVocab:
    """Stands in for `torchtext._torchtext.Vocab` (the C++ vocab) while a pickle is read: its
    state is (version, [default index] or [], tokens in id order, [])."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _PickledVocab:
    """Stands in for torchtext's Python `Vocab` classes: an nn.Module's __dict__ holding the
    C++ vocab under "vocab", or the legacy vocab's __dict__ (`itos`, `stoi`, `unk_index`)."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


#: the classes a torchtext vocab pickle names -> the stand-in that reads its state
_TORCHTEXT_CLASSES = [
    (_PickledCppVocab, "torchtext._torchtext.Vocab"),
    (_PickledVocab, "torchtext.vocab.vocab.Vocab"),  # torchtext 0.12 - 0.18
    (_PickledVocab, "torchtext.vocab.Vocab"),  # torchtext <= 0.11
    (_PickledVocab, "torchtext.legacy.vocab.Vocab"),  # torchtext 0.9 - 0.11's legacy
    collections.Counter,  # the legacy vocab's `freqs`
]


def read_vocab_pt(path: str) -> SourceVocab:
    """The vocabulary of a `source_vocab.pt`: a torchtext Vocab or a {token: id} dict."""
    try:
        with torch.serialization.safe_globals(_TORCHTEXT_CLASSES):
            saved = torch.load(path, map_location="cpu", weights_only=True)
        return _vocab_from(saved)
    except Exception as exc:
        raise ValueError(
            f"{VOCAB_PT} holds no vocabulary zerobatch can read without torchtext "
            f"({type(exc).__name__}: {str(exc)[:200]}); convert it where torchtext is "
            f"installed and ship {VOCAB_JSON} instead: {VOCAB_CONVERSION}") from exc


def _vocab_from(saved: Any) -> SourceVocab:
    if isinstance(saved, dict):
        return SourceVocab(_checked_vocab(saved, VOCAB_PT))
    state = saved.state if isinstance(saved, _PickledVocab) else None
    if isinstance(state, dict) and isinstance(state.get("vocab"), _PickledCppVocab):
        saved = state["vocab"]
    elif isinstance(state, dict) and "itos" in state:
        return _legacy_vocab(state)
    if isinstance(saved, _PickledCppVocab):
        return _cpp_vocab(saved.state)
    raise ValueError(f"a {type(saved).__name__} where a torchtext Vocab or a dict was expected")


def _cpp_vocab(state: Any) -> SourceVocab:
    if not (isinstance(state, tuple) and len(state) == 4):
        raise ValueError("torchtext's vocab state is not (version, integers, strings, tensors)")
    version, integers, itos, tensors = state
    if not isinstance(version, str) or version < TORCHTEXT_VOCAB_STATE_VERSION:
        raise ValueError(f"torchtext vocab state version {version!r} is older than "
                         f"{TORCHTEXT_VOCAB_STATE_VERSION}, which torchtext itself requires")
    if tensors or not isinstance(integers, list) or len(integers) > 1 or not all(
            isinstance(i, int) for i in integers):
        raise ValueError("torchtext's vocab state has unexpected integers or tensors")
    return SourceVocab(_stoi_of(itos), integers[0] if integers else None)


def _legacy_vocab(state: dict) -> SourceVocab:
    unknown = state.get("unk_index")
    stoi = state.get("stoi")
    if isinstance(stoi, dict) and stoi:
        vocab = _checked_vocab(dict(stoi), VOCAB_PT)
    else:
        vocab = _stoi_of(state["itos"])
    return SourceVocab(vocab, unknown if isinstance(unknown, int) else None)


def _stoi_of(itos: Any) -> dict[str, int]:
    if not isinstance(itos, list) or not all(isinstance(token, str) for token in itos):
        raise ValueError("torchtext's token list is not a list of strings")
    stoi = {token: index for index, token in enumerate(itos)}
    if len(stoi) != len(itos):
        raise ValueError("torchtext's token list repeats a token")
    return stoi
