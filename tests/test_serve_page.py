"""The chat page of `slm serve`, driven in headless Chromium over the DevTools protocol: type a message, watch
the answer stream in, stop a reply."""

from __future__ import annotations

import time

import pytest
from chromium import CHROMIUM, Page

from test_serve import slow_lm, start, wait_until  # noqa: F401  (slow_lm is a fixture)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package chromium)")


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
