#!/usr/bin/env bash
# The installable package, as a new user gets it (`make package-test`, after `make demo`):
#   1. a clean clone of the committed tree (untracked build outputs stay behind);
#   2. `pip wheel` of it with pip's normal build isolation: a platform wheel holding the
#      compiled aggregator, with `zerobatch` as its only top-level package and the LICENSE;
#   3. a build without Cython fails, and its message names Cython and ZEROBATCH_PURE_PYTHON;
#   4. the wheel in a fresh venv: `zerobatch` imports with its compiled twin, the repository's
#      folder names (`api`, `broker`, `worker`, `benchmarks`) do not, torch is not pulled in,
#      `zerobatch --version` answers;
#   5. with torch installed by hand, `zerobatch start` serves the demo from a hostile directory
#      (a `zerobatch/` package, a `worker.py` and an `api/` package that all raise, and the run
#      directory `./zerobatch`): a PNG over HTTP and over ZeroMQ comes back as a 3.
# One PASS or FAIL line per check, with its wall time; exit status 1 if any check failed.
# Everything lives in one temporary directory that is removed on exit, and every process that
# it started (all of them run that directory's venv) is stopped, then killed, on any exit.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="$repo/.venv/bin/python"
torch_requirement="torch==2.13.0"
demo_model="$repo/examples/digits/model"
sample_png="$repo/examples/digits/sample_3.png"

tmp="$(mktemp -d /tmp/zbpkg.XXXXXX)"
venv="$tmp/venv"
hostile="$tmp/hostile"
failures=0
server_started=0

# ------------------------------------------------------------------------------ helpers

now_s() { printf '%s' "$EPOCHREALTIME"; }

elapsed_s() {  # seconds since $1, one decimal
    awk -v start="$1" -v end="$EPOCHREALTIME" 'BEGIN { printf "%.1f", end - start }'
}

# check NAME COMMAND...: run COMMAND, print PASS or FAIL (and on FAIL its output) with the
# wall time; a failure is counted and the script goes on.
check() {
    local name="$1" start output
    shift
    start="$(now_s)"
    if output="$("$@" 2>&1)"; then
        printf 'PASS  %-58s %6ss\n' "$name" "$(elapsed_s "$start")"
        return 0
    fi
    printf 'FAIL  %-58s %6ss\n' "$name" "$(elapsed_s "$start")"
    printf '%s\n' "$output" | tail -n 40 | sed 's/^/      | /'
    failures=$((failures + 1))
    return 1
}

# require NAME COMMAND...: a check that later ones cannot do without; stop on failure.
require() {
    check "$@" || { echo "FAIL  stopping: later checks need '$1'"; exit 1; }
}

# Pids (other than this script) whose command line mentions the temporary directory: every
# python started here runs "$venv/bin/python", and the server's children carry its run dir.
our_processes() {
    local entry pid
    for entry in /proc/[0-9]*; do
        pid="${entry#/proc/}"
        [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
        if tr '\0' ' ' 2>/dev/null <"$entry/cmdline" | grep -qF -- "$tmp"; then
            echo "$pid"
        fi
    done
}

cleanup() {
    local status=$? pids
    trap - EXIT INT TERM
    if ((server_started)); then
        (cd "$hostile" && timeout 40 "$venv/bin/zerobatch" stop --run-dir ./zerobatch \
            --timeout 30) >/dev/null 2>&1 || true
    fi
    mapfile -t pids < <(our_processes)
    if ((${#pids[@]})); then
        echo "cleanup: killing leftover processes: ${pids[*]}"
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ------------------------------------------------------------------------------ the checks

echo "zerobatch package check in $tmp"
script_start="$(now_s)"
test -x "$python" || { echo "FAIL  $python is missing: run 'make build' first"; exit 1; }
test -f "$demo_model/digits_cnn.pt" || {
    echo "FAIL  the demo has no weights ($demo_model/digits_cnn.pt): run 'make demo' first"
    exit 1
}

# 1. The committed tree only.
require "clean clone of the committed tree" \
    git clone --quiet --no-hardlinks "$repo" "$tmp/src"

# 2. pip's own isolated build (pyproject.toml's build requirements).
require "pip wheel with build isolation" \
    timeout 900 "$python" -m pip wheel --no-deps --quiet -w "$tmp/dist" "$tmp/src"
wheel="$(ls "$tmp"/dist/zerobatch-*.whl)"
echo "      wheel: $(basename "$wheel"), $(stat -c %s "$wheel") bytes"

check_wheel_contents() {  # $1: the wheel
    "$python" - "$1" <<'EOF'
import fnmatch
import sys
import zipfile

path = sys.argv[1]
names = zipfile.ZipFile(path).namelist()
problems = []
if path.endswith("-none-any.whl"):
    problems.append(f"{path} is a pure-Python wheel, not a platform wheel")
if not fnmatch.filter(names, "zerobatch/broker/_aggregator*.so"):
    problems.append("no compiled aggregator zerobatch/broker/_aggregator*.so")
tops = {name.split("/", 1)[0] for name in names}
tops = {top for top in tops if not top.endswith(".dist-info")}
if tops != {"zerobatch"}:
    problems.append(f"top-level names {sorted(tops)}; only zerobatch is wanted")
if not any(name.endswith(".dist-info/LICENSE") or ".dist-info/licenses/LICENSE" in name
           for name in names):
    problems.append("no LICENSE in the dist-info")
if problems:
    sys.exit("\n".join(problems))
EOF
}
check "wheel: platform wheel, compiled aggregator, only zerobatch/, LICENSE" \
    check_wheel_contents "$wheel"

# The sdist (what `python -m build` builds its wheel from) must hold what the build needs: the
# .pyx and .pxd, never a generated .c or a compiled module.
check_sdist() {
    (cd "$tmp/src" && ZEROBATCH_PURE_PYTHON=1 "$python" setup.py -q sdist -d "$tmp/sdist") \
        >/dev/null 2>&1 || return 1
    tar tzf "$tmp"/sdist/zerobatch-*.tar.gz | "$python" -c '
import sys
names = {line.strip().split("/", 1)[1] for line in sys.stdin if "/" in line}
wanted = {"csrc/_aggregator.pyx", "csrc/_aggregator.pxd", "pyproject.toml", "LICENSE"}
missing = wanted - names
unwanted = sorted(n for n in names if n.endswith((".c", ".so")))
if missing or unwanted:
    sys.exit(f"sdist lacks {sorted(missing)}; holds build outputs {unwanted}")
'
}
check_wheel_from_sdist() {
    timeout 900 "$python" -m pip wheel --no-deps --quiet -w "$tmp/sdist-dist" \
        "$tmp"/sdist/zerobatch-*.tar.gz || return 1
    check_wheel_contents "$(ls "$tmp"/sdist-dist/zerobatch-*.whl)"
}
if check "sdist: holds csrc/*.pyx and *.pxd, no build outputs" check_sdist; then
    check "pip wheel from the sdist: the same checks" check_wheel_from_sdist
fi

# 3. Without Cython (no build isolation, a venv without it), the build fails and says why.
check_fails_without_cython() {
    local output
    timeout 120 "$python" -m venv "$tmp/nocython" || return 1
    if output="$(cd "$tmp" && env -u ZEROBATCH_PURE_PYTHON timeout 300 \
            "$tmp/nocython/bin/python" -m pip install --no-build-isolation --no-deps \
            "$tmp/src" 2>&1)"; then
        echo "pip install succeeded without Cython:"
        echo "$output"
        return 1
    fi
    grep -q "Cython" <<<"$output" && grep -q "ZEROBATCH_PURE_PYTHON" <<<"$output" && return 0
    echo "the failure does not name Cython and ZEROBATCH_PURE_PYTHON:"
    echo "$output"
    return 1
}
check "pip install without Cython fails, naming the fix" check_fails_without_cython

# 4. The wheel in a fresh venv.
require "fresh venv" timeout 120 "$python" -m venv "$venv"
require "pip install the wheel (its own requirements only)" \
    timeout 900 "$venv/bin/python" -m pip install --quiet "$wheel"

mkdir "$tmp/neutral"
in_neutral() { (cd "$tmp/neutral" && "$@"); }

check "import zerobatch, zerobatch.broker, the aggregator" in_neutral "$venv/bin/python" -c \
    "import zerobatch, zerobatch.broker; from zerobatch.broker import aggregator"
check "the compiled aggregator twin loads" in_neutral "$venv/bin/python" -c "
from zerobatch.broker import aggregator
name = aggregator.implementation_name(aggregator.load('compiled'))
assert name == 'compiled', name"
check "api, broker, worker, benchmarks are not importable" in_neutral "$venv/bin/python" -c "
import importlib.util
found = [name for name in ('api', 'broker', 'worker', 'benchmarks')
         if importlib.util.find_spec(name) is not None]
assert not found, f'importable: {found}'"
check "torch is not an install requirement" in_neutral "$venv/bin/python" -c "
import importlib.util
assert importlib.util.find_spec('torch') is None, 'torch was installed with the wheel'"
expected_version="$("$python" -c 'import re, sys; print(re.search(r"^__version__ = \"([^\"]+)\"", open(sys.argv[1]).read(), re.M).group(1))' "$tmp/src/zerobatch/__init__.py")"
check_version() {
    local printed
    printed="$(in_neutral timeout 30 "$venv/bin/zerobatch" --version)" || return 1
    [[ "$printed" == "zerobatch $expected_version" ]] || {
        echo "zerobatch --version printed '$printed', not 'zerobatch $expected_version'"
        return 1
    }
}
check "zerobatch --version prints $expected_version" check_version

# 5. torch by hand, then the demo served from a hostile directory.
require "pip install $torch_requirement" \
    timeout 900 "$venv/bin/python" -m pip install --quiet "$torch_requirement"

mkdir -p "$hostile/zerobatch" "$hostile/api"
echo 'raise ImportError("shadowed: the caller directory was imported")' \
    >"$hostile/zerobatch/__init__.py"
echo 'raise ImportError("shadowed: the caller directory was imported")' >"$hostile/worker.py"
echo 'raise ImportError("shadowed: the caller directory was imported")' >"$hostile/api/__init__.py"
http_port="$(free_port)"
zmq_address="tcp://127.0.0.1:$(free_port)"

start_server() {
    (cd "$hostile" && timeout 200 "$venv/bin/zerobatch" start --run-dir ./zerobatch \
        --models "digits=$demo_model" --http-port "$http_port" --client-address "$zmq_address" \
        --aggregator compiled --startup-timeout 150)
}
server_started=1  # from here on, cleanup runs `zerobatch stop` before killing what is left
if ! check "zerobatch start from the hostile directory" start_server; then
    tail -n 30 "$hostile/zerobatch/zerobatch.log" 2>/dev/null | sed 's/^/      log | /' || true
    exit 1
fi
check "the pid file is in ./zerobatch" test -s "$hostile/zerobatch/broker.pid"

top_class_is_3() {  # stdin: the digits handler's JSON, label -> probability, best first
    "$venv/bin/python" -c '
import json, sys
answer = json.load(sys.stdin)
best = next(iter(answer))
assert best == "3", f"top class {best!r}: {answer}"'
}
predict_over_http() {
    local body
    body="$(cd "$hostile" && curl --silent --show-error --fail --max-time 60 \
        -H "Content-Type: image/png" --data-binary "@$sample_png" \
        "http://127.0.0.1:$http_port/predictions/digits")" || return 1
    top_class_is_3 <<<"$body"
}
check "HTTP: sample_3.png is a 3" predict_over_http
check "ZeroMQ, from zerobatch import Client: sample_3.png is a 3" in_neutral timeout 60 \
    "$venv/bin/python" -c "
import json, sys
from zerobatch import Client
with open(sys.argv[1], 'rb') as handle:
    png = handle.read()
with Client(sys.argv[2]) as client:
    reply = client.predict('digits', png, timeout_ms=30000)
assert reply.status == 200, (reply.status, reply.body)
best = next(iter(json.loads(reply.body)))
assert best == '3', reply.body" "$sample_png" "$zmq_address"

stop_server() {
    (cd "$hostile" && timeout 60 "$venv/bin/zerobatch" stop --run-dir ./zerobatch --timeout 40) \
        || return 1
    local leftovers
    mapfile -t leftovers < <(our_processes)
    ((${#leftovers[@]} == 0)) || { echo "still running after stop: ${leftovers[*]}"; return 1; }
}
check "zerobatch stop, no process left" stop_server && server_started=0

echo "total $(elapsed_s "$script_start")s"
if ((failures)); then
    echo "FAIL  $failures check(s) failed"
    exit 1
fi
echo "PASS  the wheel installs, imports as zerobatch only, and serves from a hostile directory"
