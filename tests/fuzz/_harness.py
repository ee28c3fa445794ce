"""What the atheris targets share: instrumenting zerobatch's modules when a target runs as a
fuzzer, the framing that turns one fuzz input into several frames, the seed corpus, and
libFuzzer's command line.

atheris is imported only when a target runs as a program (`python -m tests.fuzz.<target>`),
so the hypothesis tests import the targets' logic whether or not it is installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
from typing import Callable, ContextManager, Iterable

#: where a target keeps its corpus and crash files when its command line names none
FUZZ_DIR = ".fuzz"

_U16 = struct.Struct("<H")


def fuzzing() -> bool:
    """Whether this process runs a fuzz target as its main module."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", "") or ""
    return name.startswith("tests.fuzz.") and not name.endswith("__main__")


def instrumented(*packages: str) -> ContextManager:
    """A context in which importing `packages` adds atheris's coverage instrumentation (only
    when a target runs as a fuzzer; elsewhere nothing happens). Modules imported before it
    are not instrumented, so each target imports what it fuzzes inside it."""
    if not fuzzing():
        return contextlib.nullcontext()
    try:
        import atheris
    except ImportError:
        return contextlib.nullcontext()
    return atheris.instrument_imports(include=list(packages))


# ------------------------------------------------------------------ framing of fuzz inputs

def take_frames(data: bytes, at: int, count: int) -> tuple[list[bytes], int]:
    """`count` frames from data[at:], each a u16 LE length and that many bytes (fewer when
    the input runs out); returns them and where the next record starts."""
    frames = []
    for _ in range(count):
        if at + 2 > len(data):
            break
        (length,) = _U16.unpack_from(data, at)
        at += 2
        frames.append(data[at:at + length])
        at += length
    return frames, at


def put_frames(frames: Iterable[bytes]) -> bytes:
    """take_frames' inverse, for seeds."""
    return b"".join(_U16.pack(len(frame)) + bytes(frame) for frame in frames)


# ------------------------------------------------------------------ running a target

def run(name: str, test_one_input: Callable[[bytes], None], seeds: Iterable[bytes]) -> None:
    """Fuzz test_one_input with libFuzzer's command line (sys.argv).

    Without a corpus directory on the command line, the target's own `.fuzz/<name>/corpus`
    is used (it grows from run to run); an empty or missing corpus directory is first filled
    with the target's seeds (well-formed inputs to mutate). Crashes go to
    `.fuzz/<name>/crashes/` unless -artifact_prefix says otherwise. A file named on the
    command line instead of a directory is run once (libFuzzer's reproduce mode).
    """
    import atheris

    logging.disable(logging.CRITICAL)  # the code under test logs every bad frame it drops
    seeds = list(seeds)
    argv = list(sys.argv)
    options = [arg for arg in argv[1:] if arg.startswith("-")]
    paths = [arg for arg in argv[1:] if not arg.startswith("-")]
    if not paths:
        corpus = os.path.join(FUZZ_DIR, name, "corpus")
        argv.append(corpus)
        paths = [corpus]
    if not any(option.startswith("-artifact_prefix=") for option in options):
        crashes = os.path.join(FUZZ_DIR, name, "crashes")
        os.makedirs(crashes, exist_ok=True)
        argv.insert(1, f"-artifact_prefix={crashes}{os.sep}")
    for path in paths:
        if not os.path.exists(path):
            os.makedirs(path)
        if os.path.isdir(path) and not os.listdir(path):
            for index, seed in enumerate(seeds):
                with open(os.path.join(path, f"seed-{index:03d}"), "wb") as handle:
                    handle.write(seed)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
