"""The chat page of `slm serve`, driven in headless Chromium over the DevTools protocol: type a message, watch
the answer stream in, stop a reply."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time

import httpx2 as httpx
import pytest

from test_serve import slow_lm, start, wait_until  # noqa: F401  (slow_lm is a fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package chromium)")


class Page:
    """One tab, evaluated in with Runtime.evaluate."""

    def __init__(self, url: str, profile):
        from websockets.sync.client import connect

        self.browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                                         "--remote-debugging-port=0", f"--user-data-dir={profile}", url],
                                        stderr=subprocess.PIPE, text=True)
        for line in self.browser.stderr:
            found = re.search(r"DevTools listening on ws://([^/]+)/", line)
            if found:
                break
        else:
            raise RuntimeError("Chromium did not start its DevTools endpoint")
        tabs = httpx.get(f"http://{found.group(1)}/json/list").json()
        self.stack = contextlib.ExitStack()
        self.socket = self.stack.enter_context(connect(next(tab for tab in tabs if tab["type"] == "page")
                                                       ["webSocketDebuggerUrl"], max_size=None))
        self.calls = 0

    def run(self, expression: str):
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": "Runtime.evaluate",
                                     "params": {"expression": expression, "returnByValue": True}}))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self.calls:
                return reply["result"]["result"].get("value")

    def wait(self, expression: str, seconds: float = 20):
        deadline = time.monotonic() + seconds
        while not self.run(expression):
            assert time.monotonic() < deadline, f"page never showed: {expression}"
            time.sleep(0.05)

    def close(self):
        self.stack.close()
        self.browser.kill()
        self.browser.wait()


def test_the_page_streams_an_answer_keeps_the_conversation_and_stops_a_reply(slow_lm, tmp_path):  # noqa: F811
    running = start(slow_lm, max_concurrency=2)
    page = Page(running.url + "/", tmp_path / "profile")
    try:
        page.wait("document.getElementById('model').textContent === 'tiny'")
        assert page.run("document.getElementById('temperature').value") == "0.7"
        answer = "document.querySelector('.assistant').textContent"
        # Greedy: the tiny model's answer is the same every run, and long (it does not end before the context).
        page.run("document.getElementById('temperature').value = '0'")
        page.run("document.getElementById('input').value = 'hello'; document.getElementById('send').click()")
        # Streamed: text shows while the reply is still running (Stop enabled), then grows.
        page.wait(f"{answer}.length > 0 && !document.getElementById('stop').disabled")
        first = len(page.run(answer))
        page.wait(f"{answer}.length > {first}")
        page.run("document.getElementById('stop').click()")
        page.wait("document.getElementById('stop').disabled")
        stopped = page.run(answer)
        wait_until(lambda: running.engine.busy == 0, 1.0)  # the server let go of the row
        time.sleep(0.3)
        assert page.run(answer) == stopped
        assert page.run("document.getElementById('stats').textContent").startswith("stopped")
        # A second message carries the conversation, and a reply that ends shows its tokens/s.
        page.run("document.getElementById('max_tokens').value = '6'")
        page.run("document.getElementById('input').value = 'again'; document.getElementById('send').click()")
        page.wait("document.getElementById('stats').textContent.includes('tokens/s')")
        assert page.run("conversation.map(m => m.role).join(',')") == "user,assistant,user,assistant"
        assert page.run("conversation[1].content") == stopped
        assert page.run("document.querySelectorAll('.msg').length") == 4
    finally:
        page.close()
        running.stop()
