"""api/archiver.py against the real torch-model-archiver 0.12: same flags, same manifest, same
members, same refusal; plus the progress bar and the CLI's reading of archives."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from zerobatch.api import archiver, cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ECHO_HANDLER = os.path.join(ROOT, "tests", "models", "echo", "echo_handler.py")
REAL_ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "src"
    for sub in ("extra/sub", "extra/__pycache__", "extra/.git", "more"):
        (folder / sub).mkdir(parents=True)
    shutil.copy(ECHO_HANDLER, folder / "echo_handler.py")
    (folder / "model.py").write_text("class Net: pass\n")
    (folder / "weights.pt").write_bytes(os.urandom(3000))
    (folder / "requirements.txt").write_text("numpy\n")
    (folder / "model-config.yaml").write_text("batchSize: 4\n")
    (folder / "extra" / "labels.json").write_text("{}")
    (folder / "extra" / ".hidden_file").write_text("kept")
    (folder / "extra" / "sub" / "vocab.txt").write_text("a\n")
    (folder / "extra" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (folder / "extra" / ".git" / "HEAD").write_text("ref")
    (folder / "more" / "notes.txt").write_text("n")
    return folder


FLAG_SETS = {
    "minimal": lambda s: ["--handler", str(s / "echo_handler.py")],
    "everything": lambda s: [
        "--handler", str(s / "echo_handler.py"), "--model-file", str(s / "model.py"),
        "--serialized-file", str(s / "weights.pt"),
        "--extra-files", f"{s / 'extra'},{s / 'more' / 'notes.txt'}",
        "-r", str(s / "requirements.txt"), "-c", str(s / "model-config.yaml")],
    "default-handler": lambda s: ["--handler", "image_classifier",
                                  "--serialized-file", str(s / "weights.pt")],
    "handler-without-py": lambda s: ["--handler", str(s / "echo_handler"), "--runtime",
                                     "python3"],
    "wildcard-extra": lambda s: ["--handler", str(s / "echo_handler.py"),
                                 "--extra-files", str(s / "extra" / "*.json")],
}
FORMATS = ("default", "tgz", "zip-store", "no-archive")


def run_both(src, tmp_path, flags: list[str], fmt: str, name: str = "m"):
    """Archive with the real tool and ours into two export dirs; return both paths."""
    paths = []
    for who in ("real", "ours"):
        export = tmp_path / who
        export.mkdir(parents=True, exist_ok=True)
        argv = ["--model-name", name, "-v", "1.5", "--export-path", str(export),
                "--archive-format", fmt, *flags]
        if who == "real":
            result = subprocess.run([REAL_ARCHIVER, *argv], capture_output=True, text=True,
                                    cwd=src, timeout=60)
            assert result.returncode == 0, result.stderr
        else:
            assert archiver.main(argv) == 0
        paths.append(str(export / (name + archiver.SUFFIXES[fmt])))
    return paths


def contents(path: str) -> dict[str, bytes]:
    """member name -> bytes, for a .mar, a .tar.gz or a no-archive directory."""
    if os.path.isdir(path):
        found = {}
        for folder, _dirs, files in os.walk(path):
            for entry in files:
                full = os.path.join(folder, entry)
                with open(full, "rb") as handle:
                    found[os.path.relpath(full, path)] = handle.read()
        return found
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return {info.filename: zf.read(info) for info in zf.infolist()}
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def manifest_of(files: dict[str, bytes]) -> dict:
    (name,) = [n for n in files if n.endswith("MAR-INF/MANIFEST.json")]
    return json.loads(files[name])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("flags", sorted(FLAG_SETS))
def test_same_manifest_and_members_as_torch_model_archiver(flags, fmt, src, tmp_path):
    real, ours = run_both(src, tmp_path, FLAG_SETS[flags](src), fmt)
    real_files, our_files = contents(real), contents(ours)
    assert sorted(our_files) == sorted(real_files)
    real_manifest, our_manifest = manifest_of(real_files), manifest_of(our_files)
    for manifest in (real_manifest, our_manifest):
        assert re.fullmatch(r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d", manifest.pop("createdOn"))
    assert real_manifest.pop("archiverVersion") == "0.12.0"
    assert our_manifest.pop("archiverVersion") == archiver.ARCHIVER_VERSION
    assert our_manifest == real_manifest
    assert list(our_manifest["model"]) == list(real_manifest["model"])  # field order too
    for name, data in real_files.items():
        if not name.endswith("MANIFEST.json"):
            assert our_files[name] == data, name


def test_zip_compression_matches(src, tmp_path):
    for fmt, method in (("default", zipfile.ZIP_DEFLATED), ("zip-store", zipfile.ZIP_STORED)):
        real, ours = run_both(src, tmp_path / fmt, FLAG_SETS["everything"](src), fmt)
        for path in (real, ours):
            with zipfile.ZipFile(path) as zf:
                assert {info.compress_type for info in zf.infolist()} == {method}


def test_the_manifest_text_is_indented_json(src, tmp_path):
    real, ours = run_both(src, tmp_path, FLAG_SETS["minimal"](src), "default")
    text = contents(ours)["MAR-INF/MANIFEST.json"].decode()
    assert text == json.dumps(json.loads(text), indent=2)


def test_an_existing_archive_is_refused_without_force(src, tmp_path, capsys):
    argv = ["--model-name", "m", "-v", "1", "--handler", str(src / "echo_handler.py"),
            "--export-path", str(tmp_path)]
    assert archiver.main(argv) == 0
    before = (tmp_path / "m.mar").read_bytes()
    capsys.readouterr()
    assert archiver.main(argv + ["--serialized-file", str(src / "weights.pt")]) == 1
    err = capsys.readouterr().err
    assert "m.mar already exists" in err and "--force/-f" in err
    assert (tmp_path / "m.mar").read_bytes() == before
    real = subprocess.run([REAL_ARCHIVER, *argv], capture_output=True, text=True, timeout=60)
    assert real.returncode == 1 and "already exists" in real.stderr  # the same refusal
    assert archiver.main(argv + ["-f", "--serialized-file", str(src / "weights.pt")]) == 0
    assert "weights.pt" in contents(str(tmp_path / "m.mar"))
    assert sorted(os.listdir(tmp_path)) == ["m.mar", "src"]  # no temporary file left


def test_force_replaces_a_no_archive_directory(src, tmp_path):
    argv = ["--model-name", "m", "-v", "1", "--handler", str(src / "echo_handler.py"),
            "--export-path", str(tmp_path), "--archive-format", "no-archive"]
    assert archiver.main(argv + ["--serialized-file", str(src / "weights.pt")]) == 0
    assert archiver.main(argv) == 1
    assert archiver.main(argv + ["-f"]) == 0
    assert sorted(contents(str(tmp_path / "m"))) == ["MAR-INF/MANIFEST.json", "echo_handler.py"]


def test_missing_inputs_are_one_line_errors(src, tmp_path, capsys):
    base = ["--model-name", "m", "-v", "1", "--export-path", str(tmp_path)]
    assert archiver.main(base + ["--handler", str(src / "nope.py")]) == 1
    assert "nope.py does not exist" in capsys.readouterr().err
    assert archiver.main(base + ["--handler", str(src / "echo_handler.py"),
                                 "--extra-files", str(src / "gone")]) == 1
    assert "File does not exist" in capsys.readouterr().err
    assert archiver.main(["--model-name", "bad name", "-v", "1", "--handler", "x.py"]) == 1
    assert "special characters" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_a_handler_with_a_function_copies_its_file(src, tmp_path):
    assert archiver.main(["--model-name", "m", "-v", "1", "--export-path", str(tmp_path),
                          "--handler", f"{src / 'echo_handler.py'}:handle"]) == 0
    files = contents(str(tmp_path / "m.mar"))
    assert "echo_handler.py" in files
    assert manifest_of(files)["model"]["handler"] == "echo_handler.py:handle"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("fmt", ["default", "tgz", "no-archive"])
def test_progress_bar_on_a_terminal_for_large_files(fmt, src, tmp_path, monkeypatch):
    monkeypatch.setattr(archiver, "PROGRESS_MIN_BYTES", 1000)
    args = archiver.build_parser().parse_args([
        "--model-name", "m", "-v", "1", "--handler", str(src / "echo_handler.py"),
        "--serialized-file", str(src / "weights.pt"), "--export-path", str(tmp_path),
        "--archive-format", fmt])
    terminal = FakeTerminal()
    archiver.write_archive(args, stream=terminal)
    shown = terminal.getvalue()
    assert "weights.pt [" in shown and "100.0%" in shown and shown.endswith("\n")
    assert "echo_handler.py" not in shown  # small files get no bar
    piped = io.StringIO()
    archiver.write_archive(archiver.build_parser().parse_args(
        ["--model-name", "n", "-v", "1", "--handler", str(src / "echo_handler.py"),
         "--serialized-file", str(src / "weights.pt"), "--export-path", str(tmp_path),
         "--archive-format", fmt]), stream=piped)
    assert piped.getvalue() == ""


# ---------------------------------------------------------------------- the CLI

def test_zerobatch_archive_subcommand(src, tmp_path):
    code = cli.main(["archive", "--model-name", "m", "--version", "3.0", "--handler",
                     str(src / "echo_handler.py"), "--export-path", str(tmp_path),
                     "--archive-format", "tgz"])
    assert code == 0
    assert manifest_of(contents(str(tmp_path / "m.tar.gz")))["model"]["modelVersion"] == "3.0"


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_reads_the_manifest_of_every_format(fmt, src, tmp_path):
    real, _ours = run_both(src, tmp_path, FLAG_SETS["minimal"](src), fmt, name="named")
    manifest = cli.read_manifest(real)
    assert manifest["model"]["modelName"] == "named"
    assert manifest["model"]["modelVersion"] == "1.5"


def test_cli_model_configs_take_name_and_version_from_an_archive(src, tmp_path):
    real, _ours = run_both(src, tmp_path, FLAG_SETS["minimal"](src), "default", name="named")
    args = cli.build_parser().parse_args(["start", "--model-store", str(tmp_path),
                                          "--models", os.path.relpath(real, tmp_path)])
    (model,) = cli.model_configs(args)
    assert (model.name, model.version, model.path) == ("named", "1.5", real)


def test_cli_refuses_missing_and_non_archives(tmp_path):
    with pytest.raises(cli.CliError, match="does not exist"):
        cli.read_manifest(str(tmp_path / "nope.mar"))
    (tmp_path / "junk.mar").write_bytes(b"not an archive")
    with pytest.raises(cli.CliError, match="is not a model archive"):
        cli.read_manifest(str(tmp_path / "junk.mar"))
    with zipfile.ZipFile(tmp_path / "empty.mar", "w") as zf:
        zf.writestr("h.py", "")
    with pytest.raises(cli.CliError, match="MANIFEST.json is missing"):
        cli.read_manifest(str(tmp_path / "empty.mar"))


def test_console_script_is_declared():
    with open(os.path.join(ROOT, "setup.py")) as handle:
        assert '"zerobatch-archiver=zerobatch.api.archiver:main"' in handle.read()
