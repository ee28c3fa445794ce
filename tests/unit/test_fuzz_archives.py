"""Property-based fuzzing of the archive readers: `broker.archive.prepare_model` (the broker
extracting a `.mar` zip or a `.tar.gz`/`.tar`) and `api.archiver.read_archive_manifest`
(the CLI reading the manifest), with the checks of tests/fuzz/archives.py.

Damaged archives (well-formed ones with bytes changed, cut or inserted) and hostile ones
(members named `../x`, `/abs`, `C:/x`, with NUL bytes, links out of the directory, hard
links to nowhere, fifos) are refused with ArchiveError / ConfigError, or extracted, and
nothing lands outside the extraction directory either way; a well-formed archive extracts
to exactly its members. The damaged archives that once got a reader's own error through
are regression tests in tests/unit/test_fuzz_regressions.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import archives
from zerobatch.api import archiver

#: the whole file runs in a few seconds; the atheris target is for long runs
FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=50)

#: an absolute member name that must never be created
ABSOLUTE_CANARY = "/tmp/zerobatch-fuzz-canary"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A fresh empty directory per example (hypothesis runs many in one test)."""
    base = tmp_path_factory.mktemp("archives")

    def make() -> str:
        return tempfile.mkdtemp(dir=base)

    yield make
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_canary():
    yield
    assert not os.path.lexists(ABSOLUTE_CANARY)


def check(scratch, data: bytes) -> str | None:
    top = scratch()
    try:
        return archives.check_archive(data, top)
    finally:
        shutil.rmtree(top, ignore_errors=True)


SEEDS = archives.seeds()
mutations = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255))), min_size=1,
    max_size=6)


def mutate(data: bytes, changes: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for change, at, value in changes:
        at %= len(out) + 1
        if change == "set" and at < len(out):
            out[at] = value
        elif change == "cut":
            del out[at:]
        else:
            out[at:at] = bytes((value,)) * (1 + value % 8)
    return bytes(out)


@FUZZ
@given(seed=st.sampled_from(SEEDS), changes=mutations)
def test_damaged_archives_are_refused_or_confined(scratch, seed, changes):
    check(scratch, mutate(seed, changes))


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_are_refused(scratch, data):
    assert check(scratch, data) is None


#: member names that must never reach outside the extraction directory
HOSTILE_NAMES = (
    "../outside/x", "a/../../outside/y", "..\\outside\\z", "/tmp/zerobatch-fuzz-canary",
    "../../../outside/x", "../../../../outside/x", "m/../../../../outside/x", "../sibling",
    "../../escape", "\\\\server\\share", "C:/x", "c:\\x", "a\0b", "", ".", "./", "a//b/./c",
    "MAR-INF", "link/x", "link", "m/link/x", "handler.py/x", "m/up/x", "\u00e9t\u00e9/x",
)
#: link targets, out of the directory and in it
LINK_TARGETS = ("../outside", "../../outside", "../../../outside", "../../../../outside",
                "/etc", "/tmp", ".", "..", "handler.py", "MAR-INF/MANIFEST.json", "a/../../..",
                "", "x")
hostile_names = st.sampled_from(HOSTILE_NAMES)
safe_names = st.lists(st.text("abcxyz019_.-", min_size=1, max_size=6).filter(
    lambda part: part not in (".", "..")), min_size=1, max_size=3).map("/".join)
link_targets = st.sampled_from(LINK_TARGETS)
members = st.lists(st.tuples(
    hostile_names | hostile_names | safe_names,
    st.sampled_from(["file", "file", "dir", "symlink", "symlink", "hardlink", "fifo"]),
    st.binary(max_size=20), link_targets), max_size=6)


def build(kind: str, prefix: str, members: list) -> bytes:
    manifest = [(f"{prefix}MAR-INF/MANIFEST.json", archives.MANIFEST, None, tarfile.REGTYPE),
                (f"{prefix}handler.py", b"", None, tarfile.REGTYPE)]
    tar_members = list(manifest)
    zip_members = [(name, content) for name, content, _t, _k in manifest]
    modes = {}
    for name, member_kind, content, target in members:
        if member_kind == "file":
            tar_members.append((name, content, None, tarfile.REGTYPE))
            zip_members.append((name, content))
        elif member_kind == "dir":
            tar_members.append((name, None, None, tarfile.DIRTYPE))
            zip_members.append((name.rstrip("/") + "/", b""))
        elif member_kind == "symlink":
            tar_members.append((name, None, target, tarfile.SYMTYPE))
            zip_members.append((name, target.encode()))
            modes[name] = 0o120777
        elif member_kind == "hardlink":
            tar_members.append((name, None, target, tarfile.LNKTYPE))
        else:
            tar_members.append((name, None, None, tarfile.FIFOTYPE))
            zip_members.append((name, b""))
            modes[name] = 0o010644
    if kind == "zip":
        return archives.zip_bytes([(n, c) for n, c in zip_members if n], modes=modes)
    return archives.tar_bytes(tar_members, "w:gz" if kind == "tgz" else "w")


@FEW
@given(kind=st.sampled_from(["zip", "tgz", "tar"]), prefix=st.sampled_from(["", "m/"]),
       members=members)
def test_hostile_archives_are_refused_or_confined(scratch, kind, prefix, members):
    try:
        data = build(kind, prefix, members)
    except (ValueError, tarfile.TarError):  # a name the writer itself refuses
        return
    check(scratch, data)


@settings(FEW, max_examples=30)
@given(kind=st.sampled_from(["zip", "zip-store", "tgz", "tar"]),
       files=st.dictionaries(safe_names, st.binary(max_size=200), max_size=6))
def test_well_formed_archives_extract_to_their_members(scratch, kind, files):
    """A well-formed archive with any safe member names (none inside another's path) comes
    out as exactly its files, and its manifest reads back."""
    names = sorted(files)
    if any(other.startswith(name + "/") for name in names for other in names) or any(
            name.split("/")[0] in ("MAR-INF", "handler.py") for name in names):
        return
    model = {"MAR-INF/MANIFEST.json": archives.MANIFEST, "handler.py": b"", **files}
    if kind.startswith("zip"):
        data = archives.zip_bytes(list(model.items()), zipfile.ZIP_STORED if kind == "zip-store"
                                  else zipfile.ZIP_DEFLATED)
    else:
        data = archives.tar_bytes([(f"m/{name}", content, None, tarfile.REGTYPE)
                                   for name, content in model.items()],
                                  "w:gz" if kind == "tgz" else "w")
    top = scratch()
    model_dir = archives.check_archive(data, top)
    assert model_dir is not None
    found = {}
    for folder, _dirs, names_here in os.walk(model_dir):
        for name in names_here:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, model_dir).replace(os.sep, "/")] = handle.read()
    assert found == model
    assert archiver.read_archive_manifest(os.path.join(top, archives.ARCHIVE_NAME)) == (
        json.loads(archives.MANIFEST))
    shutil.rmtree(top)


def _check_each(scratch, kind: str, archives_members: list[list[tuple]]) -> None:
    for members_here in archives_members:
        try:
            data = build(kind, "m/" if kind == "tgz" else "", members_here)
        except (ValueError, tarfile.TarError):  # a name the writer itself refuses
            continue
        check(scratch, data)


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_each_hostile_name_is_refused_or_confined(scratch, kind):
    """Each hostile name as a file, and as a directory with a file in it."""
    for name in HOSTILE_NAMES:
        _check_each(scratch, kind, [[(name, "file", b"x", "")],
                                    [(name, "dir", b"", ""), (f"{name}/x", "file", b"y", "")]])


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_each_link_target_is_refused_or_confined(scratch, kind):
    """Each link target: a link and a file written through it, a link in a member's place,
    a hard link."""
    for target in LINK_TARGETS:
        _check_each(scratch, kind, [
            [("link", "symlink", b"", target), ("link/x", "file", b"y", "")],
            [("handler.py", "symlink", b"", target)], [("a/b", "hardlink", b"", target)]])
