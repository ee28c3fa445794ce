"""The README runs as written: its code blocks are extracted and run against real servers
(and so does the CURVE section of docs/security.md, which the README points to).

Which blocks run (the marker rule):

- A ```sh block runs when every command in it starts with one of RUNNABLE (`curl`,
  `zerobatch`, `torch-model-archiver`, `mkdir`, `python -c`). A block with any other command
  (`make`, `pip`, `git`, the venv's activation) shows how to install or build, and is not run.
  A command is a line that starts in the first column, with the lines after it that are
  indented or follow a trailing backslash; lines starting with `#` are comments.
- A ```python block whose first line is a comment naming a file (`# echo_handler.py`) is that
  file: it is written into the directory the handler tutorial runs in, never run itself.
- Every other ```python block is a script, run as a file with the repository root as cwd.

Where they run, by the section that holds them: the blocks of "A first request" and "The
Python client" against one server of the demo model (examples/digits/model) with token
authorization on, as `make serve` runs it, from the repository root; the blocks of "Serving
your own TorchServe model" in order, in a fresh directory holding the README's files, so the
three handler forms are archived by the real torch-model-archiver, served by `zerobatch start`
and answered; then, in that same directory (its archives), the blocks of "Managing models",
which start a server with the model API on and list, scale, register and unregister models
and replace a key over the management API; and the commands of docs/security.md's CURVE
section, which make CURVE keys and start a server that requires them, in a fresh directory,
where a client with the keys it names is answered and one without is not. The only rewriting
is of addresses: `127.0.0.1:8080`, `127.0.0.1:8081` and `tcp://127.0.0.1:9500` become the test
server's, and `zerobatch start` / `stop` / `token` get its ports and run directory. Each answer
is checked against what the README says it is. A README with fewer blocks of a kind than
EXPECTED_BLOCKS fails, so a block cannot drop out of the test unnoticed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import pytest

from tests.support.servers import ROOT, TOKEN_AUTH, Server, finish, free_port, start_server

pytestmark = pytest.mark.integration

README = os.path.join(ROOT, "README.md")
SECURITY_DOC = os.path.join(ROOT, "docs", "security.md")
DEMO_MODEL = os.path.join(ROOT, "examples", "digits", "model")
DEMO_WEIGHTS = os.path.join(DEMO_MODEL, "digits_cnn.pt")
README_HTTP = "127.0.0.1:8080"
README_MANAGEMENT = "127.0.0.1:8081"
README_ZMQ = "tcp://127.0.0.1:9500"

RUNNABLE = ("curl ", "zerobatch ", "torch-model-archiver ", "mkdir ", "python -c ")
TUTORIAL_SECTION = "Serving your own TorchServe model"
MANAGING_SECTION = "Managing models"
#: docs/security.md's section of CURVE commands (the README points to it)
CURVE_SECTION = "CURVE: clients on other hosts"
#: the client endpoint the CURVE section opens to other hosts; the test binds loopback
README_OPEN_ZMQ = "tcp://0.0.0.0:9500"
FILE_COMMENT = re.compile(r"^# ([A-Za-z0-9_]+\.py)$")

#: (section, kind) -> the fewest blocks the README must hold
EXPECTED_BLOCKS = {
    ("A first request", "sh"): 1,
    ("The Python client", "script"): 2,
    (TUTORIAL_SECTION, "file"): 4,
    (TUTORIAL_SECTION, "sh"): 2,
    (MANAGING_SECTION, "sh"): 1,
}
#: what the tutorial's requests answer, as the README says they do: model -> answer
TUTORIAL_ANSWERS = {"echo": "hello", "length": {"length": 5}, "scale": [2.0, 4.0, 6.0]}
TUTORIAL_ANSWER_TEXT = ("`hello`", '`{"length": 5}`', "`[2.0, 4.0, 6.0]`")
#: what the management calls answer, as the README says they do
SCALED = "Workers scaled to 2 for model: echo"
REGISTERED = 'Model "length" Version: 1.0 registered with 1 initial workers'
COMMAND_TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    section: str
    language: str
    text: str

    @property
    def kind(self) -> str:
        if self.language == "python":
            return "file" if self.file_name else "script"
        return self.language

    @property
    def file_name(self) -> str | None:
        match = FILE_COMMENT.match(self.text.split("\n", 1)[0])
        return match.group(1) if match else None

    def commands(self) -> list[str]:
        commands: list[str] = []
        for line in self.text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            continues = commands and (line[0].isspace() or commands[-1].endswith("\\"))
            if continues:
                commands[-1] += "\n" + line
            else:
                commands.append(line)
        return commands

    @property
    def runnable(self) -> bool:
        return self.language == "sh" and all(c.startswith(RUNNABLE) for c in self.commands())


def readme_blocks(path: str = README) -> list[Block]:
    """Every fenced block of the README (or another Markdown page) that starts in the first
    column, with its `## ` section."""
    blocks, section, fence, lines = [], "", None, []
    with open(path, encoding="utf-8") as handle:
        for line in handle.read().splitlines():
            if fence is None:
                if line.startswith("## "):
                    section = line[3:].strip()
                elif line.startswith("```"):
                    fence, lines = line[3:].strip(), []
            elif line.startswith("```"):
                blocks.append(Block(section, fence, "\n".join(lines) + "\n"))
                fence = None
            else:
                lines.append(line)
    assert fence is None, f"{path} has an unclosed code fence"
    return blocks


def blocks_of(section: str, kind: str, path: str = README) -> list[Block]:
    return [b for b in readme_blocks(path) if b.section == section and b.kind == kind
            and (kind != "sh" or b.runnable)]


def run_command(command: str, cwd: str, env: dict) -> str:
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=COMMAND_TIMEOUT_S)
    assert result.returncode == 0, (f"`{command}` failed ({result.returncode}):\n"
                                    f"{result.stdout}\n{result.stderr}")
    return result.stdout


def venv_env() -> dict:
    """The environment of a shell whose venv is active: its bin directory first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def for_server(text: str, server: Server) -> str:
    """text with the README's addresses made the server's, and `zerobatch token` reading the
    server's run directory."""
    return (text.replace(README_ZMQ, server.client_address)
            .replace(README_HTTP, f"127.0.0.1:{server.http_port}")
            .replace(README_MANAGEMENT, f"127.0.0.1:{server.management_port}")
            .replace("zerobatch token", f"zerobatch token --run-dir {server.run_dir}"))


def own_server(env: dict) -> Server:
    """A server for commands that run `zerobatch start` themselves: free ports, its own run
    directory (see for_server and start_flags)."""
    return Server(run_dir=tempfile.mkdtemp(prefix="zb"), http_port=free_port(),
                  client_address=f"tcp://127.0.0.1:{free_port()}", env=env,
                  management_port=free_port(), metrics_port=free_port())


def for_own_server(command: str, server: Server) -> str:
    """A command for own_server: addresses and `zerobatch token` as for_server, and `zerobatch
    start` / `stop` given its ports and run directory (token authorization stays on, as by
    default)."""
    flags = (f"--http-port {server.http_port} --client-address {server.client_address} "
             f"--run-dir {server.run_dir} "
             f"--management-address http://127.0.0.1:{server.management_port} "
             f"--metrics-address http://127.0.0.1:{server.metrics_port}")
    command = for_server(command, server)
    command = command.replace("zerobatch start", f"zerobatch start {flags}", 1)
    return command.replace("zerobatch stop", f"zerobatch stop --run-dir {server.run_dir}", 1)


def top_label(answer: str) -> str:
    return next(iter(json.loads(answer)))


# ---------------------------------------------------------------------- the blocks

def test_the_readme_holds_the_blocks_this_test_runs():
    for (section, kind), fewest in EXPECTED_BLOCKS.items():
        found = blocks_of(section, kind)
        assert len(found) >= fewest, (f"README section {section!r}: {len(found)} {kind} "
                                      f"block(s) this test runs, expected at least {fewest}")
    files = {b.file_name for b in blocks_of(TUTORIAL_SECTION, "file")}
    assert {"echo_handler.py", "length_handler.py", "scale_handler.py", "model.py"} <= files
    scripts = "".join(b.text for b in blocks_of("The Python client", "script"))
    assert "from zerobatch import Client" in scripts
    assert "from zerobatch import AsyncClient" in scripts and "asyncio.run(main())" in scripts
    assert blocks_of(CURVE_SECTION, "sh", SECURITY_DOC), (
        f"docs/security.md has no runnable sh block in its section {CURVE_SECTION!r}")


def test_blocks_outside_the_rule_are_only_install_and_build_commands():
    """What the rule leaves out is exactly what must not run in a test."""
    for block in readme_blocks():
        if block.language == "sh" and not block.runnable:
            commands = block.commands()
            assert all(c.startswith(("make ", "python3 -m venv", "pip ", "zerobatch --version"))
                       for c in commands), f"a README sh block this test does not run: {commands}"
        else:
            assert block.language in ("sh", "python"), f"unexpected block {block.language!r}"


def test_every_http_request_of_the_readme_carries_its_key():
    """Token authorization is on by default: a README curl to an API without its key would
    be answered 400. Only /ping (open to health probes) goes without one."""
    for block in readme_blocks():
        for command in block.commands() if block.runnable else ():
            if not command.startswith("curl ") or "/ping" in command:
                continue
            if "/token?" in command:
                kind = "api"
            elif README_MANAGEMENT in command:
                kind = "management"
            else:
                kind = None
            wanted = (f'-H "Authorization: Bearer $(zerobatch token {kind})"' if kind
                      else '-H "Authorization: Bearer $(zerobatch token)"')
            assert wanted in command, f"{command!r} does not send {wanted}"


# ---------------------------------------------------------------------- the demo

@pytest.fixture(scope="module")
def demo_server():
    """The demo model served as `make serve` serves it: token authorization on."""
    assert os.path.exists(DEMO_WEIGHTS), (
        f"{DEMO_WEIGHTS} is missing: build it with `.venv/bin/python -m examples.digits.train "
        "--out examples/digits/model` (make test does)")
    server = start_server({"digits": DEMO_MODEL}, TOKEN_AUTH)
    yield server
    finish(server)


@pytest.mark.timeout(300)
def test_first_requests_answer_as_documented(demo_server):
    commands = [c for b in blocks_of("A first request", "sh") for c in b.commands()]
    seen = set()
    for command in commands:
        answer = run_command(for_server(command, demo_server), ROOT, venv_env())
        if "/ping" in command:
            assert json.loads(answer) == {"status": "Healthy"}
            seen.add("ping")
        else:
            assert top_label(answer) == "3", answer
            seen.add("form" if " -F " in command else "png")
            # the README says so: without the key, TorchServe's 400 InvalidKeyException
            bare = re.sub(r'-H "Authorization: Bearer \$\(zerobatch token\)" ', "", command)
            assert bare != command
            refused = json.loads(run_command(for_server(bare, demo_server), ROOT, venv_env()))
            assert (refused.get("code"), refused.get("type")) == (400, "InvalidKeyException"), (
                f"a prediction without the key was not refused: {refused}")
    assert {"ping", "png"} <= seen


@pytest.mark.timeout(300)
def test_python_scripts_run(demo_server, tmp_path):
    for index, block in enumerate(blocks_of("The Python client", "script")):
        script = tmp_path / f"block_{index}.py"
        script.write_text(for_server(block.text, demo_server))
        result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                                text=True, timeout=COMMAND_TIMEOUT_S)
        assert result.returncode == 0, f"{block.text}\n{result.stdout}\n{result.stderr}"
        if "reply.json()" in block.text:
            assert "200 {'3': " in result.stdout, result.stdout
        if "answers" in block.text:
            assert "32 answers" in result.stdout, result.stdout
        if "ModelNotFound" in block.text:
            assert "\nnot served:" in result.stdout, result.stdout


# ---------------------------------------------------------------------- your own model

@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """The tutorial run as written, in a fresh directory holding the README's files: that
    directory (its model_store/ for the next section) and each model's answer."""
    directory = tmp_path_factory.mktemp("tutorial")
    for block in blocks_of(TUTORIAL_SECTION, "file"):
        (directory / block.file_name).write_text(block.text)
    env = venv_env()
    server = own_server(env)
    answers = {}
    try:
        for block in blocks_of(TUTORIAL_SECTION, "sh"):
            for command in block.commands():
                command = for_own_server(command, server)
                output = run_command(command, str(directory), env)
                model = re.search(r"/predictions/(\w+)", command)
                if command.startswith("curl") and model:
                    answers[model.group(1)] = output
    finally:
        finish(server)
    return directory, answers


@pytest.mark.timeout(300)
def test_the_three_handler_forms_are_archived_served_and_answered(tutorial):
    with open(README, encoding="utf-8") as handle:
        readme = handle.read()
    for text in TUTORIAL_ANSWER_TEXT:
        assert text in readme, f"the README no longer documents the answer {text}"
    _directory, answers = tutorial
    assert set(answers) == set(TUTORIAL_ANSWERS)
    assert answers["echo"] == TUTORIAL_ANSWERS["echo"]
    assert json.loads(answers["length"]) == TUTORIAL_ANSWERS["length"]
    assert json.loads(answers["scale"]) == TUTORIAL_ANSWERS["scale"]


# ---------------------------------------------------------------------- managing models

def management_call(command: str) -> str | None:
    """What a README command does on the management API, by its method and path: "list",
    "register", "describe", "scale", "unregister" or "token"; None for another command."""
    match = re.search(re.escape(README_MANAGEMENT) + r'(/[^\s"?]*)', command)
    if match is None:
        return None
    path = match.group(1)
    method = re.search(r"-X (\w+)", command)
    method = method.group(1) if method else "GET"
    if path == "/token":
        return "token"
    if path == "/models":
        return {"GET": "list", "POST": "register"}[method]
    return {"GET": "describe", "PUT": "scale", "DELETE": "unregister"}[method]


@pytest.mark.timeout(300)
def test_managing_models_lists_scales_registers_and_unregisters(tutorial):
    with open(README, encoding="utf-8") as handle:
        readme = handle.read()
    for text in (f"`{SCALED}`", f"`{REGISTERED}`"):
        assert text in readme, f"the README no longer documents the answer {text}"
    directory, _answers = tutorial
    env = venv_env()
    server = own_server(env)
    done = {}
    try:
        for block in blocks_of(MANAGING_SECTION, "sh"):
            for command in block.commands():
                call = management_call(command)
                if call == "token":
                    before = run_command(for_server("zerobatch token", server), ROOT, env)
                command = for_own_server(command, server)
                output = run_command(command, str(directory), env)
                if call == "token":
                    assert output == "\n", output  # TorchServe's answer to /token
                    after = run_command(for_server("zerobatch token", server), ROOT, env)
                    assert after != before, "the inference key was not replaced"
                    done[call] = True
                elif call:
                    done[call] = json.loads(output)
                    if call == "register":  # the registered model serves
                        key = run_command(for_server("zerobatch token", server), ROOT, env)
                        status, _headers, body = server.http(
                            "POST", "/predictions/length", b"hello",
                            {"Content-Type": "text/plain",
                             "Authorization": f"Bearer {key.strip()}"})
                        assert (status, json.loads(body)) == (200, {"length": 5}), body
    finally:
        finish(server)
    assert set(done) >= {"list", "scale", "register", "unregister", "token"}, done
    assert [m["modelName"] for m in done["list"]["models"]] == ["echo"], done["list"]
    assert done["scale"] == {"status": SCALED}
    assert done["register"] == {"status": REGISTERED}
    assert done["unregister"] == {"status": 'Model "length" unregistered'}


# ---------------------------------------------------------------------- security

@pytest.mark.timeout(300)
def test_the_curve_commands_make_keys_and_a_server_that_requires_them(tmp_path):
    """docs/security.md's CURVE section, which the README's security section points to."""
    from zerobatch.api.client import Client
    from zerobatch.errors import BrokerUnavailable, DeadlineExceeded

    os.symlink(os.path.join(ROOT, "examples"), tmp_path / "examples")
    env = venv_env()
    server = own_server(env)
    with open(SECURITY_DOC, encoding="utf-8") as handle:
        page = handle.read()
    assert 'curve_server_key="keys/server.key"' in page
    assert 'curve_secret_key="keys/alice.key_secret")' in page
    try:
        for block in blocks_of(CURVE_SECTION, "sh", SECURITY_DOC):
            for command in block.commands():
                command = command.replace(README_OPEN_ZMQ, server.client_address)
                run_command(for_own_server(command, server), str(tmp_path), env)
        with open(os.path.join(ROOT, "examples", "digits", "sample_3.png"), "rb") as image:
            png = image.read()
        with Client(server.client_address, timeout_ms=5000,
                    curve_server_key=str(tmp_path / "keys" / "server.key"),
                    curve_secret_key=str(tmp_path / "keys" / "alice.key_secret")) as client:
            assert top_label(client.predict("digits", png).text) == "3"
        with Client(server.client_address, timeout_ms=300) as anonymous:
            # refused either way: no answer in time while its handshake is tried, or no
            # connection to queue on once the server has refused it
            with pytest.raises((DeadlineExceeded, BrokerUnavailable)):
                anonymous.predict("digits", png)
    finally:
        finish(server)
