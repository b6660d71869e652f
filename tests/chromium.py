"""Headless Chromium driven over the DevTools protocol: the page tests open a tab, evaluate JavaScript in it
(awaiting promises) and read the network requests it made."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time

import httpx2 as httpx

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class PageError(AssertionError):
    """The page's script threw: its message."""


class Page:
    """One tab. `run` evaluates an expression (a promise is awaited); `requests` are the URLs it asked for."""

    def __init__(self, url: str, profile, extra_args: tuple[str, ...] = ()):
        from websockets.sync.client import connect

        self.browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                                         "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                                         *extra_args, "about:blank"],
                                        stderr=subprocess.PIPE, text=True)
        for line in self.browser.stderr:
            found = re.search(r"DevTools listening on ws://([^/]+)/", line)
            if found:
                break
        else:
            raise RuntimeError("Chromium did not start its DevTools endpoint")
        # Its log lines (GPU probing and the like) are read and dropped, so a full pipe never blocks it.
        drain = subprocess.Popen(["cat"], stdin=self.browser.stderr, stdout=subprocess.DEVNULL)
        self.stack = contextlib.ExitStack()
        self.stack.callback(drain.wait)
        tabs = httpx.get(f"http://{found.group(1)}/json/list").json()
        self.socket = self.stack.enter_context(connect(next(tab for tab in tabs if tab["type"] == "page")
                                                       ["webSocketDebuggerUrl"], max_size=None))
        self.calls = 0
        self.requests: list[str] = []
        self.loads = 0  # Page.loadEventFired seen
        self.command("Network.enable")
        self.command("Page.enable")
        self.goto(url)

    def command(self, method: str, timeout: float = 60, **params):
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("method") == "Network.requestWillBeSent":
                self.requests.append(reply["params"]["request"]["url"])
            elif reply.get("method") == "Page.loadEventFired":
                self.loads += 1
            if reply.get("id") == self.calls:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def requests_outside(self, origin: str) -> list[str]:
        """The URLs the page asked for that are not `origin`'s (blob: and data: URLs are the page's own memory)."""
        return [url for url in self.requests if not url.startswith((origin, "blob:", "data:"))]

    def goto(self, url: str, timeout: float = 30) -> None:
        """Open `url` and return once it has loaded."""
        loads = self.loads
        self.command("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while self.loads == loads:
            assert time.monotonic() < deadline, f"{url} never loaded"
            self.command("Runtime.evaluate", expression="0")  # reads the events that came meanwhile
            time.sleep(0.05)

    def run(self, expression: str, timeout: float = 60):
        result = self.command("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                              awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise PageError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def wait(self, expression: str, seconds: float = 20):
        deadline = time.monotonic() + seconds
        while not self.run(expression):
            assert time.monotonic() < deadline, f"page never showed: {expression}"
            time.sleep(0.05)

    def close(self):
        self.browser.kill()
        self.browser.wait()
        self.stack.close()
