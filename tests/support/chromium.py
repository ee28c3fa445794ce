"""A headless Chromium driven over the DevTools protocol, for the dashboard's browser tests.

    chromium --headless=new --no-sandbox --disable-gpu --window-size=1280,900
             --remote-debugging-port=0 --user-data-dir=<tmp> about:blank

`Chromium` starts that in its own session (so that `close()` can end the whole tree: the
browser, its zygote, renderer and utility processes), reads the port from the profile's
DevToolsActivePort file, attaches to the page over a WebSocket and offers what the tests need:
navigate, evaluate, wait for a condition (polled, with a deadline), a full-page screenshot,
and the console errors, uncaught exceptions and log entries (a Content-Security-Policy
violation is one) the page produced. `find_chromium()` gives the executable, or None.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import websockets.sync.client

#: names Chromium goes by (Debian's package installs /usr/bin/chromium)
EXECUTABLES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_WAIT_S = 30.0
CALL_WAIT_S = 30.0
WINDOW = (1280, 900)


def find_chromium() -> str | None:
    """$CHROMIUM if set, else the first of EXECUTABLES on the PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return shutil.which(explicit)
    for name in EXECUTABLES:
        found = shutil.which(name)
        if found:
            return found
    return None


def command(executable: str, profile_dir: str) -> list[str]:
    return [executable, "--headless=new", "--no-sandbox", "--disable-gpu",
            f"--window-size={WINDOW[0]},{WINDOW[1]}", "--remote-debugging-port=0",
            f"--user-data-dir={profile_dir}", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking",
            "--disable-component-update", "--hide-scrollbars", "--force-color-profile=srgb",
            "about:blank"]


class Chromium:
    """One headless browser with one page; use as a context manager."""

    def __init__(self, executable: str, profile_dir: str) -> None:
        self.profile_dir = profile_dir
        self.log_path = os.path.join(profile_dir, "chromium.log")
        os.makedirs(profile_dir, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(command(executable, profile_dir), stdin=subprocess.DEVNULL,
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.events: list[dict] = []
        self._ids = itertools.count(1)
        self._socket = None
        self._stack = contextlib.ExitStack()  # websockets wants its connection used in a with
        try:
            self._socket = self._stack.enter_context(websockets.sync.client.connect(
                self._page_socket_url(), max_size=None, open_timeout=START_WAIT_S))
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _page_socket_url(self) -> str:
        port_file = os.path.join(self.profile_dir, "DevToolsActivePort")
        deadline = time.monotonic() + START_WAIT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited ({self.process.returncode}): {self.log()}")
            try:
                with open(port_file, encoding="ascii") as handle:
                    port = int(handle.readline())
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list",
                                            timeout=5) as reply:
                    targets = json.load(reply)
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"chromium's DevTools did not answer: {self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        """The browser's own output (for failure messages)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()[-4000:]
        except OSError:
            return ""

    def call(self, method: str, **params) -> dict:
        """One DevTools command; events that arrive meanwhile are kept in self.events."""
        call_id = next(self._ids)
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + CALL_WAIT_S
        while True:
            message = json.loads(self._socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 20.0, what: str = ""):
        """Poll `expression` until it is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never showed {what or expression} in "
                                     f"{timeout_s} s; errors: {self.errors()}")
            time.sleep(0.1)

    def screenshot(self, path: str) -> None:
        """A PNG of the whole page, WINDOW wide."""
        metrics = self.call("Page.getLayoutMetrics")
        height = max(WINDOW[1], int(metrics["cssContentSize"]["height"]))
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": WINDOW[0], "height": height, "scale": 1})
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(shot["data"]))

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error-level log entries so far (a
        Content-Security-Policy violation is one), not failed fetches: those are answers the
        server gave, which tests check by what the page shows."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append("exception: " + str(details.get("exception", {}).get(
                    "description", details.get("text"))))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                args = params.get("args", [])
                found.append("console: " + " ".join(
                    str(arg.get("value", arg.get("description"))) for arg in args))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                if params["entry"].get("source") != "network":  # a status the test chose
                    found.append("log: " + params["entry"].get("text", ""))
        return found

    def close(self) -> None:
        try:
            self._stack.close()
        except Exception:  # noqa: BLE001 - closing a socket to a browser that may be gone
            pass
        self._socket = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the session this browser started
        except (ProcessLookupError, PermissionError):
            pass
        if self.process.poll() is None:
            self.process.wait(10)
        self._log.close()
