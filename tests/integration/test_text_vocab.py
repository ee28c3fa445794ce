"""The `text_classifier` default handler over a `source_vocab.pt` as TorchServe's archives ship
it: a torchtext `Vocab` saved with `torch.save` (pytorch/serve's
examples/text_classification/train.py: `build_vocab_from_iterator(..., specials=["<unk>"])`,
`set_default_index(vocab["<unk>"])`, `torch.save(vocab, "source_vocab.pt")`), read without
torchtext.

torchtext cannot be installed beside the torch the tests run (its last release, 0.18, is built
for torch 2.3). One file saved by torchtext 0.18 itself is kept as test data
(tests/data/torchtext/, made by tests/torchserve/make_torchtext_vocab.py; TorchServe's answers
over it: tests/integration/test_text_classifier_answers.py); the other formats are made here
by `torch.save` of classes that pickle as torchtext's do, as read in torchtext 0.18's source:
`torchtext.vocab.vocab.Vocab`, an nn.Module whose `vocab` attribute is the C++
`torchtext._torchtext.Vocab`, which pybind11 pickles through its `__getstate__`: (version
"0.0.2", [default index] or [], tokens in id order, []). torchtext 0.10/0.11 named the module
class `torchtext.vocab.Vocab`; torchtext <= 0.9 (and `torchtext.legacy`) pickled a plain
object with `freqs`, `itos`, `stoi`, `unk_index` and `vectors`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import types
import warnings

import pytest

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")

from zerobatch.worker.handlers.vocab import (  # noqa: E402 (after the torch skip)
    VOCAB_CONVERSION,
    SourceVocab,
    read_vocab_pt,
)

REAL_ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")

#: ids in the order build_vocab_from_iterator gives them: specials first, then by frequency
TOKENS = ["<unk>", "good", "bad", "movie", "not", "not good", "good movie"]

MODEL = """
    import torch


    class Sentiment(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.EmbeddingBag(7, 2, mode="sum")

        def forward(self, text, offsets):
            return self.embedding(text, offsets)
"""


@contextlib.contextmanager
def torchtext_classes():
    """Modules named as torchtext's, holding classes that pickle as torchtext's Vocab (0.12
    to 0.18) and its C++ vocab do; gone again afterwards."""
    cpp = types.ModuleType("torchtext._torchtext")
    python = types.ModuleType("torchtext.vocab.vocab")

    class Vocab:  # pybind11's py::pickle: state from __getstate__, rebuilt by __setstate__
        def __init__(self, itos, default_index, version="0.0.2"):
            self.itos, self.default_index, self.version = itos, default_index, version

        def __getstate__(self):
            integers = [] if self.default_index is None else [self.default_index]
            return (self.version, integers, list(self.itos), [])

    Vocab.__module__, Vocab.__qualname__ = cpp.__name__, "Vocab"
    cpp.Vocab = Vocab

    class ModuleVocab(torch.nn.Module):
        def __init__(self, vocab):
            super().__init__()
            self.vocab = vocab

    ModuleVocab.__module__, ModuleVocab.__name__ = python.__name__, "Vocab"
    ModuleVocab.__qualname__ = "Vocab"
    python.Vocab = ModuleVocab
    modules = {"torchtext": types.ModuleType("torchtext"),
               "torchtext.vocab": types.ModuleType("torchtext.vocab"),
               "torchtext.vocab.vocab": python, "torchtext._torchtext": cpp}
    if any(name in sys.modules for name in modules):
        pytest.skip("a real torchtext is imported")
    sys.modules.update(modules)
    try:
        yield python.Vocab, cpp.Vocab
    finally:
        for name in modules:
            del sys.modules[name]


def save_torchtext_vocab(path, itos, default_index, version="0.0.2", bare=False):
    with torchtext_classes() as (module_vocab, cpp_vocab):
        cpp = cpp_vocab(itos, default_index, version)
        torch.save(cpp if bare else module_vocab(cpp), str(path))


class LegacyVocab:
    """torchtext <= 0.9's `torchtext.vocab.Vocab`: its __getstate__ turns `stoi` (a
    defaultdict) into a dict."""

    def __init__(self, itos, unk_index):
        self.freqs = collections.Counter(itos)
        self.itos, self.unk_index, self.vectors = itos, unk_index, None
        self.stoi = {token: index for index, token in enumerate(itos)}


def save_legacy_vocab(path, itos, unk_index):
    module = types.ModuleType("torchtext.vocab")
    LegacyVocab.__module__, LegacyVocab.__qualname__ = module.__name__, "Vocab"
    module.Vocab = LegacyVocab
    saved = {"torchtext": types.ModuleType("torchtext"), "torchtext.vocab": module}
    sys.modules.update(saved)
    try:
        torch.save(LegacyVocab(itos, unk_index), str(path))
    finally:
        for name in saved:
            del sys.modules[name]


# ------------------------------------------------------------------ reading the file

def test_a_torchtext_vocab_is_read_without_torchtext(tmp_path):
    save_torchtext_vocab(tmp_path / "v.pt", TOKENS, 0)
    vocab = read_vocab_pt(str(tmp_path / "v.pt"))
    assert isinstance(vocab, SourceVocab)
    assert vocab.get_itos() == TOKENS and vocab.get_stoi() == {t: i for i, t in
                                                               enumerate(TOKENS)}
    assert vocab.get_default_index() == 0 and len(vocab) == 7
    # torchtext's lookups: an unknown token answers the default index
    assert vocab["bad"] == 2 and vocab["never seen"] == 0
    assert vocab(["good", "movie", "??"]) == vocab.lookup_indices(["good", "movie", "??"]) == [
        1, 3, 0]
    assert vocab.lookup_tokens([4, 5]) == ["not", "not good"]
    assert "movie" in vocab and "film" not in vocab


def test_a_bare_cpp_vocab_and_one_without_a_default_index(tmp_path):
    save_torchtext_vocab(tmp_path / "bare.pt", ["a", "b"], None, bare=True)
    vocab = read_vocab_pt(str(tmp_path / "bare.pt"))
    assert vocab == {"a": 0, "b": 1} and vocab.get_default_index() is None
    with pytest.raises(KeyError, match="no default index"):
        vocab["c"]
    save_torchtext_vocab(tmp_path / "unk.pt", ["a", "<unk>"], None)
    assert read_vocab_pt(str(tmp_path / "unk.pt")).get_default_index() == 1  # "<unk>"'s


def test_a_legacy_torchtext_vocab(tmp_path):
    save_legacy_vocab(tmp_path / "legacy.pt", ["<unk>", "<pad>", "good"], 0)
    vocab = read_vocab_pt(str(tmp_path / "legacy.pt"))
    assert vocab == {"<unk>": 0, "<pad>": 1, "good": 2} and vocab["other"] == 0


def test_a_plain_dict_is_still_read(tmp_path):
    torch.save({"<unk>": 0, "good": 1}, str(tmp_path / "dict.pt"))
    vocab = read_vocab_pt(str(tmp_path / "dict.pt"))
    assert vocab == {"<unk>": 0, "good": 1} and vocab["x"] == 0


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("make", [
    pytest.param(lambda path: save_torchtext_vocab(path, ["a"], None, version="0.0.1"),
                 id="old-state-version"),
    pytest.param(lambda path: save_torchtext_vocab(path, ["a", "a"], None),
                 id="repeated-token"),
    pytest.param(lambda path: torch.save([1, 2], str(path)), id="a-list"),
    pytest.param(lambda path: torch.save(Payload(), str(path)), id="code-in-the-pickle"),
    pytest.param(lambda path: path.write_bytes(b"not a torch file"), id="not-torch"),
])
def test_what_cannot_be_read_names_the_conversion(tmp_path, make):
    make(tmp_path / "source_vocab.pt")
    with pytest.raises(ValueError) as refused:
        read_vocab_pt(str(tmp_path / "source_vocab.pt"))
    message = str(refused.value)
    assert VOCAB_CONVERSION in message and str(tmp_path) not in message
    assert "\n" not in VOCAB_CONVERSION


def test_a_scripted_vocab_is_refused_with_the_conversion(tmp_path):
    class Lookup(torch.nn.Module):  # what torch.jit.script(vocab) saves: TorchScript
        def forward(self, tokens: list[str]) -> list[int]:
            return [len(token) for token in tokens]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Lookup()).save(str(tmp_path / "source_vocab.pt"))
    with pytest.raises(ValueError, match="source_vocab.json"):
        read_vocab_pt(str(tmp_path / "source_vocab.pt"))


def test_the_conversion_command_runs_where_the_vocab_loads(tmp_path):
    """VOCAB_CONVERSION, run in the model directory by a Python whose `torchtext` loads the
    file (here: the stand-in classes, which offer get_stoi as torchtext's Vocab does)."""
    itos = ["<unk>", "good"]
    save_torchtext_vocab(tmp_path / "source_vocab.pt", itos, 0)
    fake = tmp_path / "fake" / "torchtext"
    (fake / "vocab").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "vocab" / "__init__.py").write_text("")
    (fake / "vocab" / "vocab.py").write_text(textwrap.dedent("""
        import torch


        class Vocab(torch.nn.Module):
            def get_stoi(self):
                return {t: i for i, t in enumerate(self.vocab.itos)}
    """))
    (fake / "_torchtext.py").write_text(textwrap.dedent("""
        class Vocab:
            def __setstate__(self, state):
                self.itos = state[2]
    """))
    command = VOCAB_CONVERSION.split(" ", 2)  # python -c "..."
    assert command[:2] == ["python", "-c"]
    subprocess.run([sys.executable, "-c", command[2][1:-1].replace('\\"', '"')],
                   cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "fake")},
                   check=True, timeout=120)
    assert json.loads((tmp_path / "source_vocab.json").read_text()) == {"<unk>": 0, "good": 1}


# ------------------------------------------------------------------ served from an archive

@pytest.fixture(scope="module")
def text_archive(tmp_path_factory):
    src = tmp_path_factory.mktemp("text-src")
    export = tmp_path_factory.mktemp("text-export")
    (src / "model.py").write_text(textwrap.dedent(MODEL).lstrip())
    weight = torch.zeros(len(TOKENS), 2)
    weight[1, 0] = 4.0  # "good" -> positive
    weight[2, 1] = 4.0  # "bad" -> negative
    weight[5, 1] = 9.0  # the 2-gram "not good" -> negative
    torch.save({"embedding.weight": weight}, str(src / "model.pt"))
    save_torchtext_vocab(src / "source_vocab.pt", TOKENS, 0)
    (src / "index_to_name.json").write_text(json.dumps({"0": "positive", "1": "negative"}))
    result = subprocess.run(
        [REAL_ARCHIVER, "--model-name", "sentiment", "--version", "1.0",
         "--model-file", str(src / "model.py"), "--serialized-file", str(src / "model.pt"),
         "--handler", "text_classifier", "--export-path", str(export),
         "--extra-files", f"{src / 'source_vocab.pt'},{src / 'index_to_name.json'}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return str(export / "sentiment.mar")


@pytest.fixture(scope="module")
def server(text_archive):
    from tests.support.servers import finish, start_server

    started = start_server({"sentiment": text_archive})
    yield started
    finish(started)


@pytest.mark.parametrize("text, label", [
    ("A <b>good</b> movie!", "positive"), ("Bad, BAD movie.", "negative"),
    ("It was not good", "negative"), ("never heard of it", None)])
def test_text_classifier_reads_the_torchtext_vocab_of_an_archive(server, text, label):
    status, _h, body = server.predict("sentiment", text.encode(), "text/plain")
    assert status == 200, body
    answer = json.loads(body)
    assert set(answer) == {"positive", "negative"}
    if label is None:  # only unknown tokens: the "<unk>" row, all zeros
        assert answer == {"positive": 0.5, "negative": 0.5}
    else:
        assert max(answer, key=answer.get) == label and answer[label] > 0.95
