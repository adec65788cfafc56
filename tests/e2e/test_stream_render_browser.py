"""static/js/stream-render.js in a real browser: a streamed reply is shown as rendered
Markdown at every step (no raw `**` or `>` on screen) and hostile text never becomes an
element, a link or an attribute.

The module is imported into a page of the embedded server (same origin, so the CSP allows
it) and fed every prefix of a reply, as the stream would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from providers.demo import demo_reply
from tests.e2e.conftest import Server
from tests.e2e.test_browser import browser  # noqa: F401 (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# Render `text` into a detached element and describe what was built.
RENDER = """async (texts) => {
  const { renderStreaming } = await import("/static/js/stream-render.js");
  return texts.map((text) => {
    const box = document.createElement("div");
    box.append(renderStreaming(text));
    const elements = [...box.querySelectorAll("*")];
    const prose = box.cloneNode(true);
    prose.querySelectorAll("pre").forEach((node) => node.remove());
    return {
      text: box.textContent,
      prose: prose.textContent,
      tags: elements.map((node) => node.tagName.toLowerCase()),
      attributes: elements.flatMap(
        (node) => [...node.attributes].map((a) => `${a.name}=${a.value}`)),
      html: box.innerHTML,
    };
  });
}"""

SAFE_TAGS = {
    "p", "strong", "em", "code", "pre", "blockquote", "ul", "ol", "li", "hr",
    "h1", "h2", "h3", "h4", "h5", "h6",
}  # fmt: skip

COMMON = """# Plan

This is **important** and *subtle*, with `code`.

> A quoted line with **bold** inside.

1. First *step*.
2. Second step with `x = 1`.

- a bullet
- another **bold** bullet

```python
print("**not bold**")
```

Done."""


@pytest.fixture(scope="module")
def render(browser: Any, embedded_server: Server) -> Iterator[Any]:  # noqa: F811
    page = browser.new_page()
    page.goto(f"{embedded_server.base_url}/accounts/login/")

    def run(texts: list[str]) -> list[dict[str, Any]]:
        return list(page.evaluate(RENDER, texts))

    yield run
    page.close()


def prefixes(text: str) -> list[str]:
    return [text[:n] for n in range(1, len(text) + 1)]


def test_common_markdown_is_rendered(render: Any) -> None:
    [result] = render([COMMON])
    html = result["html"]
    assert "<h1>Plan</h1>" in html
    assert "<strong>important</strong>" in html and "<em>subtle</em>" in html
    assert "<code>code</code>" in html
    assert (
        "<blockquote><p>A quoted line with <strong>bold</strong> inside.</p></blockquote>" in html
    )
    assert (
        "<ol><li>First <em>step</em>.</li><li>Second step with <code>x = 1</code>.</li></ol>"
        in html
    )
    assert "<ul><li>a bullet</li><li>another <strong>bold</strong> bullet</li></ul>" in html
    assert '<pre><code>print("**not bold**")</code></pre>' in html  # code stays literal
    assert "<p>Done.</p>" in html


@pytest.mark.parametrize("reply", [COMMON, demo_reply("Streaming check")])
def test_no_raw_markers_at_any_point_of_the_stream(render: Any, reply: str) -> None:
    for prefix, result in zip(prefixes(reply), render(prefixes(reply)), strict=True):
        shown = result["prose"]  # code blocks show their text as written
        assert "**" not in shown, (prefix, result["html"])
        assert not any(line.lstrip().startswith(">") for line in shown.split("\n")), prefix
        assert "# Plan" not in shown and "1. First" not in shown and "- a bullet" not in shown
        assert set(result["tags"]) <= SAFE_TAGS, result["tags"]


def test_the_demo_reply_matches_the_final_text(render: Any) -> None:
    reply = demo_reply("Hello")
    [result] = render([reply])
    assert "<strong>demo model</strong>" in result["html"]
    assert "<blockquote><p>Hello</p></blockquote>" in result["html"]
    assert result["html"].count("<li>") == 3


@pytest.mark.parametrize(
    "hostile",
    [
        "<img src=x onerror=alert(1)>",
        "<script>alert(1)</script>",
        "[x](javascript:alert(1))",
        "![pixel](https://evil.example/p.png)",
        '<a href="javascript:alert(1)">x</a>',
        "**<svg onload=alert(1)>**",
        "`<iframe src=https://evil.example>`",
        "> <img src=x onerror=alert(1)>",
        "- [x](javascript:alert(1))",
        '```"><script>alert(1)</script>\n<b>x</b>\n```',
        "# <style>body{display:none}</style>",
        "<https://evil.example>",
        "javascript:alert(1)",
    ],
)
def test_hostile_text_never_becomes_an_element_or_a_link(render: Any, hostile: str) -> None:
    for result in render([*prefixes(hostile), f"Before {hostile} after"]):
        assert set(result["tags"]) <= SAFE_TAGS, (hostile, result["html"])
        assert "a" not in result["tags"] and "img" not in result["tags"]
        assert [a for a in result["attributes"] if not a.startswith("start=")] == [], result
    # The markup the model wrote is still there, as text (a fence's info string aside).
    [whole] = render([hostile])
    assert any(mark in whole["text"] for mark in ("<", "javascript:", "](")), whole


def test_deep_nesting_and_long_input_stay_bounded(render: Any) -> None:
    deep = "> " * 200 + "**" * 200 + "x"
    long = "**word** " * 5000
    results = render([deep, long])
    assert all(set(r["tags"]) <= SAFE_TAGS for r in results)
    assert results[1]["tags"].count("strong") == 5000
