"""broker/archive.py: every archive format loads; unsafe or malformed archives are refused.

Good archives are made by the real `torch-model-archiver` (run from the venv, as a user would)
and by ours; bad ones are built here with zipfile/tarfile. A refusal must be an ArchiveError
naming the archive and the problem, and must leave the directory tree exactly as it was.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile

import pytest

from zerobatch.api import archiver
from zerobatch.broker import archive
from zerobatch.broker.archive import prepare_model, prepare_models
from zerobatch.config import ModelConfig
from zerobatch.errors import ArchiveError, ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ECHO_HANDLER = os.path.join(ROOT, "tests", "models", "echo", "echo_handler.py")
REAL_ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")
FORMATS = ("default", "tgz", "zip-store", "no-archive")
GOOD_MANIFEST = json.dumps({"runtime": "python", "model": {
    "modelName": "evil", "handler": "h.py", "modelVersion": "1.0"}})


@pytest.fixture
def src(tmp_path):
    """Model sources: the echo handler, weights, an extra directory with a subdirectory."""
    folder = tmp_path / "src"
    (folder / "extra" / "sub").mkdir(parents=True)
    shutil.copy(ECHO_HANDLER, folder / "echo_handler.py")
    (folder / "weights.pt").write_bytes(os.urandom(5000))
    (folder / "extra" / "labels.json").write_text('{"0": "zero"}')
    (folder / "extra" / "sub" / "vocab.txt").write_text("a\nb\n")
    return folder


@pytest.fixture
def work_root(tmp_path):
    root = tmp_path / "run"
    (root / "models").mkdir(parents=True)
    return str(root)


def archive_flags(src, name: str, fmt: str, export: str) -> list[str]:
    return ["--model-name", name, "--version", "2.0", "--handler", str(src / "echo_handler.py"),
            "--serialized-file", str(src / "weights.pt"), "--extra-files", str(src / "extra"),
            "--export-path", export, "--archive-format", fmt]


def real_archive(src, name: str, fmt: str, export: str) -> str:
    result = subprocess.run([REAL_ARCHIVER, *archive_flags(src, name, fmt, export)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return os.path.join(export, name + archiver.SUFFIXES[fmt])


def our_archive(src, name: str, fmt: str, export: str) -> str:
    assert archiver.main(archive_flags(src, name, fmt, export)) == 0
    return os.path.join(export, name + archiver.SUFFIXES[fmt])


def tree(root) -> list[str]:
    """Every path under root, relative, sorted: the before/after picture."""
    found = []
    for folder, dirs, files in os.walk(root):
        for entry in dirs + files:
            found.append(os.path.relpath(os.path.join(folder, entry), root))
    return sorted(found)


def assert_echo_model(model_dir: str, src) -> None:
    with open(os.path.join(model_dir, "MAR-INF", "MANIFEST.json")) as handle:
        manifest = json.load(handle)
    assert manifest["model"]["handler"] == "echo_handler.py"
    assert manifest["model"]["modelVersion"] == "2.0"
    with open(os.path.join(model_dir, "weights.pt"), "rb") as handle:
        assert handle.read() == (src / "weights.pt").read_bytes()
    assert os.path.isfile(os.path.join(model_dir, "echo_handler.py"))
    assert os.path.isfile(os.path.join(model_dir, "labels.json"))
    assert os.path.isfile(os.path.join(model_dir, "sub", "vocab.txt"))


# ---------------------------------------------------------------------- good archives

@pytest.mark.parametrize("make", [real_archive, our_archive], ids=["real", "ours"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads(make, fmt, src, work_root, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    path = make(src, "echo", fmt, str(export))
    model_dir = prepare_model(path, work_root)
    assert_echo_model(model_dir, src)
    if fmt == "no-archive":
        assert model_dir == os.path.abspath(path)  # a directory is used in place
    else:
        assert model_dir.startswith(os.path.join(work_root, "models", "echo-"))


def test_a_bare_model_directory_is_used_in_place(work_root):
    echo_dir = os.path.dirname(ECHO_HANDLER)
    assert prepare_model(echo_dir, work_root) == echo_dir
    assert tree(work_root) == ["models"]


def test_an_unchanged_archive_is_extracted_once(src, work_root, tmp_path):
    path = real_archive(src, "echo", "default", str(tmp_path))
    first = prepare_model(path, work_root)
    marker = os.path.join(first, "marker")
    open(marker, "w").close()
    assert prepare_model(path, work_root) == first and os.path.exists(marker)
    os.utime(path, ns=(1, 1))  # a changed archive gets a fresh directory
    second = prepare_model(path, work_root)
    assert second != first and not os.path.exists(os.path.join(second, "marker"))


def test_prepare_models_maps_archives_and_reports_refusals(src, work_root, tmp_path):
    good = real_archive(src, "echo", "tgz", str(tmp_path))
    bad = str(tmp_path / "bad.mar")
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", GOOD_MANIFEST)
        zf.writestr("../evil.py", "x = 1")
    echo_dir = os.path.dirname(ECHO_HANDLER)
    models = [ModelConfig(name="good", path=good), ModelConfig(name="bad", path=bad),
              ModelConfig(name="dir", path=echo_dir)]
    kept, refused = prepare_models(models, work_root)
    assert [m.name for m in kept] == ["good", "dir"]
    assert kept[0].path.startswith(os.path.join(work_root, "models"))
    assert kept[1].path == echo_dir
    assert [(m.name, type(e)) for m, e in refused] == [("bad", ArchiveError)]


# ---------------------------------------------------------------------- refusals

def make_zip(path, members: dict[str, bytes], *, manifest: str | None = GOOD_MANIFEST,
             symlinks: tuple[str, ...] = ()) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        if manifest is not None:
            zf.writestr("MAR-INF/MANIFEST.json", manifest)
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in symlinks:
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, data)
    return str(path)


def make_tgz(path, members: list[tarfile.TarInfo | tuple[str, bytes]], *,
             manifest: str | None = GOOD_MANIFEST) -> str:
    with tarfile.open(path, "w:gz") as tar:
        if manifest is not None:
            data = manifest.encode()
            info = tarfile.TarInfo("evil/MAR-INF/MANIFEST.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return str(path)


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def lie_about_size(path: str, member: str, declared: int, *, compressed: bool = False
                   ) -> None:
    """Rewrite the uncompressed (or the compressed) size of `member` in its local and central
    zip headers."""
    with open(path, "rb") as handle:
        data = bytearray(handle.read())
    name = member.encode()
    shift = 4 if compressed else 0  # the compressed size comes 4 bytes before the other
    for signature, size_at, name_len_at, name_at in ((b"PK\x03\x04", 22, 26, 30),
                                                     (b"PK\x01\x02", 24, 28, 46)):
        start = data.find(signature)
        while start != -1:
            name_len = struct.unpack_from("<H", data, start + name_len_at)[0]
            if data[start + name_at:start + name_at + name_len] == name:
                struct.pack_into("<I", data, start + size_at - shift, declared)
            start = data.find(signature, start + 4)
    with open(path, "wb") as handle:
        handle.write(bytes(data))


EVIL_ABSOLUTE = "/tmp/zerobatch-test-evil-absolute.py"

BAD_ARCHIVES = {
    "zip-dotdot": (lambda d: make_zip(d / "a.mar", {"../evil.py": b"x"}), ["'..'", "../evil.py"]),
    "zip-deep-dotdot": (lambda d: make_zip(d / "a.mar", {"sub/../../../evil.py": b"x"}),
                        ["'..'"]),
    "zip-absolute": (lambda d: make_zip(d / "a.mar", {EVIL_ABSOLUTE: b"x"}),
                     ["absolute", EVIL_ABSOLUTE]),
    "zip-symlink": (lambda d: make_zip(d / "a.mar", {"passwd": b"/etc/passwd"},
                                       symlinks=("passwd",)), ["symlink", "passwd"]),
    "zip-bad-manifest": (lambda d: make_zip(d / "a.mar", {"h.py": b""}, manifest="{nope"),
                         ["MAR-INF/MANIFEST.json", "not valid JSON"]),
    "zip-manifest-no-model": (lambda d: make_zip(d / "a.mar", {}, manifest='{"runtime": 1}'),
                              ['"model"']),
    "zip-manifest-no-handler": (lambda d: make_zip(d / "a.mar", {}, manifest=json.dumps(
        {"model": {"modelName": "x"}})), ["model.handler"]),
    "zip-no-manifest": (lambda d: make_zip(d / "a.mar", {"h.py": b""}, manifest=None),
                        ["MAR-INF/MANIFEST.json", "missing"]),
    "tgz-dotdot": (lambda d: make_tgz(d / "a.tar.gz", [("evil/../../evil.py", b"x")]),
                   ["'..'", "evil/../../evil.py"]),
    "tgz-absolute": (lambda d: make_tgz(d / "a.tar.gz", [(EVIL_ABSOLUTE, b"x")]),
                     ["absolute"]),
    "tgz-symlink-out": (lambda d: make_tgz(d / "a.tar.gz", [
        link("evil/out", "../../../.."), ("evil/out/evil.py", b"x")]),
        ["symlink", "evil/out", "outside"]),
    "tgz-symlink-absolute": (lambda d: make_tgz(d / "a.tar.gz", [link("evil/pw", "/etc/passwd")]),
                             ["symlink", "outside"]),
    "tgz-symlink-chain-out": (lambda d: make_tgz(d / "a.tar.gz", [
        link("evil/a/b/up", ".."), link("evil/esc", "a/b/up/../../..")]),
        ["symlink", "evil/esc", "outside"]),
    "tgz-hardlink-out": (lambda d: make_tgz(d / "a.tar.gz", [
        link("evil/pw", "/etc/passwd", tarfile.LNKTYPE)]), ["hard link", "/etc/passwd"]),
    "tgz-fifo": (lambda d: make_tgz(d / "a.tar.gz", [special("evil/fifo", tarfile.FIFOTYPE)]),
                 ["evil/fifo", "fifo"]),
    "tgz-device": (lambda d: make_tgz(d / "a.tar.gz", [special("evil/mem", tarfile.CHRTYPE)]),
                   ["evil/mem", "device"]),
    "tgz-no-manifest": (lambda d: make_tgz(d / "a.tar.gz", [("evil/h.py", b"")], manifest=None),
                        ["missing"]),
    "not-an-archive": (lambda d: (d / "a.mar").write_bytes(b"hello") and str(d / "a.mar"),
                       ["neither a zip"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_bad_archives_are_refused_and_nothing_is_written(case, tmp_path, work_root):
    build, expected = BAD_ARCHIVES[case]
    evil_dir = tmp_path / "archives"
    evil_dir.mkdir()
    path = build(evil_dir)
    before = tree(tmp_path)
    with pytest.raises(ArchiveError) as caught:
        prepare_model(path, work_root)
    message = str(caught.value)
    assert path in message
    for fragment in expected:
        assert fragment in message
    assert isinstance(caught.value, ConfigError)
    assert tree(tmp_path) == before
    assert not os.path.lexists(EVIL_ABSOLUTE)


def test_declared_size_over_the_limit_is_refused_before_extracting(tmp_path, work_root):
    path = make_zip(tmp_path / "bomb.mar", {"zeros.bin": b"\0" * (1 << 20)})
    before = tree(tmp_path)
    with pytest.raises(ArchiveError, match="declared uncompressed size exceeds the limit of "
                                           "65536 bytes at member 'zeros.bin'"):
        prepare_model(path, work_root, max_bytes=1 << 16)
    assert tree(tmp_path) == before


def test_a_zip_bomb_with_a_lying_header_is_caught_while_extracting(tmp_path, work_root):
    path = make_zip(tmp_path / "bomb.mar", {"zeros.bin": b"\0" * (1 << 20)})
    lie_about_size(path, "zeros.bin", 1000)
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("zeros.bin").file_size == 1000  # the lie is what zipfile reads
    before = tree(tmp_path)
    with pytest.raises(ArchiveError, match="zeros.bin.*(declares|limit)"):
        prepare_model(path, work_root, max_bytes=1 << 16)
    assert tree(tmp_path) == before


def test_a_tar_bomb_is_refused(tmp_path, work_root):
    path = make_tgz(tmp_path / "bomb.tar.gz", [("evil/zeros.bin", b"\0" * (1 << 20))])
    with pytest.raises(ArchiveError, match="exceeds the limit of 65536 bytes"):
        prepare_model(path, work_root, max_bytes=1 << 16)
    assert tree(work_root) == ["models"]


@pytest.mark.parametrize("suffix", [".mar", ".tar.gz"])
def test_too_many_members_are_refused(suffix, tmp_path, work_root):
    members = {f"f{index}.txt": b"" for index in range(20)}
    if suffix == ".mar":
        path = make_zip(tmp_path / f"many{suffix}", members)
    else:
        path = make_tgz(tmp_path / f"many{suffix}", list(members.items()))
    with pytest.raises(ArchiveError, match="more than 10 members"):
        prepare_model(path, work_root, max_members=10)
    assert tree(work_root) == ["models"]


def test_bytes_are_counted_while_writing(tmp_path):
    """The running count, not only the declared sizes, stops a member that keeps coming."""
    extractor = archive._Extractor(str(tmp_path), "x.mar", archive._Budget("x.mar", 10))
    with pytest.raises(ArchiveError, match="exceeds the limit of 10 bytes"):
        extractor.write_file(["a"], "a", io.BytesIO(b"0" * 11), declared=5)
    extractor = archive._Extractor(str(tmp_path), "x.mar", archive._Budget("x.mar", 100))
    with pytest.raises(ArchiveError, match="larger than the 5 bytes its header declares"):
        extractor.write_file(["b"], "b", io.BytesIO(b"0" * 11), declared=5)


def test_a_tar_link_inside_the_archive_is_kept(tmp_path, work_root):
    path = make_tgz(tmp_path / "links.tar.gz", [
        ("evil/h.py", b"x = 1"), link("evil/alias.py", "h.py"),
        link("evil/copy.py", "evil/h.py", tarfile.LNKTYPE)])
    model_dir = prepare_model(path, work_root)
    for name in ("alias.py", "copy.py"):
        with open(os.path.join(model_dir, name)) as handle:
            assert handle.read() == "x = 1"
    assert not os.path.islink(os.path.join(model_dir, "copy.py"))


def test_a_missing_archive_is_a_config_error(tmp_path, work_root):
    with pytest.raises(ArchiveError, match="does not exist"):
        prepare_model(str(tmp_path / "nope.mar"), work_root)


# ---------------------------------------------------------------------- compression ratio

ZEROS = b"\0" * (8 << 20)  # 8 MiB that deflate to about 8 KiB: 1000 to 1


def assert_ratio_refusal(message: str, archive_name: str, member: str, tmp_path) -> None:
    assert message.startswith(f"{archive_name}: ")  # the file name, not where it lies
    assert str(tmp_path) not in message
    assert f"member {member!r}" in message and "more than 200:1" in message


def test_a_zip_member_over_the_compression_ratio_is_refused_before_extracting(tmp_path,
                                                                              work_root):
    path = make_zip(tmp_path / "bomb.mar", {"zeros.bin": ZEROS})
    before = tree(tmp_path)
    with pytest.raises(ArchiveError) as caught:
        prepare_model(path, work_root)
    assert_ratio_refusal(str(caught.value), "bomb.mar", "zeros.bin", tmp_path)
    assert tree(tmp_path) == before


def test_a_zip_member_lying_about_its_compressed_size_is_refused(tmp_path, work_root):
    """The header claims the member is barely compressed: what counts is the room it really
    takes in the file, up to the next member or the central directory."""
    path = make_zip(tmp_path / "bomb.mar", {"zeros.bin": ZEROS, "pad.bin": os.urandom(100_000)})
    lie_about_size(path, "zeros.bin", 64 << 10, compressed=True)  # 128:1 by the header
    with zipfile.ZipFile(path) as zf:  # the lie is what zipfile reads, and it still inflates
        assert zf.getinfo("zeros.bin").compress_size == 64 << 10
        with zf.open("zeros.bin") as source:
            assert b"".join(iter(lambda: source.read(1 << 20), b"")) == ZEROS
    before = tree(tmp_path)
    with pytest.raises(ArchiveError) as caught:
        prepare_model(path, work_root)
    assert_ratio_refusal(str(caught.value), "bomb.mar", "zeros.bin", tmp_path)
    assert tree(tmp_path) == before


def test_small_or_ordinary_members_pass_the_ratio(tmp_path, work_root):
    """Below 1 MiB any ratio passes (JSON, vocabularies); above it, real data does."""
    labels = json.dumps({str(index): "label" for index in range(40_000)}).encode()
    weights = os.urandom(3 << 20)
    path = make_zip(tmp_path / "fine.mar", {"zeros.json": b" " * ((1 << 20) - 10),
                                            "labels.json": labels, "weights.pt": weights})
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("zeros.json")
        assert info.file_size > 200 * info.compress_size  # far past the ratio, under the floor
    model_dir = prepare_model(path, work_root)
    with open(os.path.join(model_dir, "weights.pt"), "rb") as handle:
        assert handle.read() == weights


def test_the_ratio_is_counted_on_the_bytes_written(tmp_path):
    """While writing, a zip member is counted against its compressed bytes, and a tar's
    output against the compressed bytes read so far, whatever the headers said."""
    extractor = archive._Extractor(str(tmp_path), "/x/y.mar", archive._Budget("/x/y.mar", 1 << 40))
    with pytest.raises(ArchiveError, match=r"^y\.mar: member 'a' is compressed more than 200:1"):
        extractor.write_file(["a"], "a", io.BytesIO(b"0" * (2 << 20)), declared=2 << 20,
                             compressed=5000)
    budget = archive._Budget("/x/y.tar.gz", 1 << 40, compressed_read=lambda: 5000)
    extractor = archive._Extractor(str(tmp_path), "/x/y.tar.gz", budget)
    extractor.write_file(["b"], "b", io.BytesIO(b"0" * (1 << 20)), declared=1 << 20)
    with pytest.raises(ArchiveError, match=r"^y\.tar\.gz: member 'c' is compressed more than"):
        extractor.write_file(["c"], "c", io.BytesIO(b"0" * (1 << 20)), declared=1 << 20)


def test_a_tar_over_the_compression_ratio_is_refused(tmp_path, work_root):
    path = make_tgz(tmp_path / "bomb.tar.gz", [("evil/zeros.bin", ZEROS)])
    with pytest.raises(ArchiveError) as caught:
        prepare_model(path, work_root)
    assert_ratio_refusal(str(caught.value), "bomb.tar.gz", "evil/zeros.bin", tmp_path)
    assert tree(work_root) == ["models"]


def test_a_tar_that_inflates_while_extracting_is_refused(tmp_path, work_root):
    """Hard links declare no size, but each is written as a copy: the bytes extracted are
    counted against the compressed bytes read."""
    links = [link(f"evil/copy{index}.bin", "evil/zeros.bin", tarfile.LNKTYPE)
             for index in range(40)]
    path = make_tgz(tmp_path / "links.tar.gz", [("evil/zeros.bin", ZEROS[:600_000]), *links])
    with pytest.raises(ArchiveError) as caught:
        prepare_model(path, work_root)
    message = str(caught.value)
    assert message.startswith("links.tar.gz: member 'evil/copy") and "200:1" in message
    assert tree(work_root) == ["models"]


def test_the_cli_reader_stops_at_a_tar_bomb_before_the_manifest(tmp_path):
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("evil/zeros.bin", ZEROS), ("evil/MAR-INF/MANIFEST.json",
                                                       GOOD_MANIFEST.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ArchiveError, match=r"^bomb\.tar\.gz: compressed more than 200:1"):
        archiver.read_archive_manifest(str(path))


# ---------------------------------------------------------------------- manifests, staging

def test_a_manifest_nested_too_deeply_refuses_only_its_model(tmp_path, work_root):
    deep = make_zip(tmp_path / "deep.mar", {"h.py": b""}, manifest="[" * 100_000)
    not_json = make_zip(tmp_path / "notjson.mar", {"h.py": b""}, manifest="{nope")
    echo_dir = os.path.dirname(ECHO_HANDLER)
    models = [ModelConfig(name="deep", path=deep), ModelConfig(name="notjson", path=not_json),
              ModelConfig(name="echo", path=echo_dir)]
    kept, refused = prepare_models(models, work_root)
    assert [m.name for m in kept] == ["echo"]
    assert [(m.name, type(e)) for m, e in refused] == [("deep", ArchiveError),
                                                        ("notjson", ArchiveError)]
    assert "nested too deeply" in str(refused[0][1])
    with pytest.raises(ArchiveError, match="nested too deeply"):
        archiver.read_archive_manifest(deep)


def test_prepare_models_removes_stale_staging_without_following_links(tmp_path, work_root):
    models_dir = os.path.join(work_root, "models")
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "precious.txt").write_text("keep me")
    stale = os.path.join(models_dir, ".staging-echo-0123456789ab-4242")
    os.makedirs(os.path.join(stale, "MAR-INF"))
    with open(os.path.join(stale, "half.bin"), "wb") as handle:
        handle.write(b"half written")
    os.symlink(outside, os.path.join(stale, "link-inside"))
    os.symlink(outside, os.path.join(models_dir, ".staging-a-link"))
    os.symlink(outside / "precious.txt", os.path.join(models_dir, ".staging-file-link"))
    with open(os.path.join(models_dir, ".staging-a-file"), "w") as handle:
        handle.write("x")
    os.makedirs(os.path.join(models_dir, "echo-0123456789ab", "MAR-INF"))  # an extraction

    kept, refused = prepare_models([ModelConfig(name="echo",
                                                path=os.path.dirname(ECHO_HANDLER))], work_root)
    assert [m.name for m in kept] == ["echo"] and refused == []
    assert sorted(os.listdir(models_dir)) == ["echo-0123456789ab"]
    assert tree(outside) == ["precious.txt", "sub"]
    assert (outside / "precious.txt").read_text() == "keep me"


def test_stale_staging_is_left_alone_behind_a_linked_models_dir(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / ".staging-x").mkdir(parents=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(elsewhere, run_dir / "models")
    assert archive.remove_stale_staging(str(run_dir / "models")) == []
    assert (elsewhere / ".staging-x").is_dir()
