"""Model output is untrusted: whatever it contains, the HTML we produce is inert.

The checks parse the produced HTML and look at what a browser would act on: elements,
attributes and link targets. Hostile markup may survive as visible text; that is inert.
"""

from __future__ import annotations

from html import unescape
from html.parser import HTMLParser
from urllib.parse import urlparse

import pytest

from conversations.rendering import render_markdown

SAFE_SCHEMES = {"http", "https"}


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Elements()
    parser.feed(html)
    return parser.found


def assert_inert(html: str) -> None:
    for tag, attrs in elements(html):
        assert tag not in {"script", "img", "iframe", "svg", "object", "embed", "style", "form"}, (
            html
        )
        for name, value in attrs.items():
            assert not name.startswith("on"), html
            assert name != "style", html
            if name in {"href", "src"}:
                assert urlparse(value or "").scheme in SAFE_SCHEMES, html


@pytest.mark.parametrize(
    "hostile",
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "[click me](javascript:alert(1))",
        "[click me](JaVaScRiPt:alert(1))",
        '<a href="javascript:alert(1)">x</a>',
        "<iframe src=https://evil.example></iframe>",
        "<svg onload=alert(1)>",
        "![pixel](https://evil.example/track.png)",
        "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        '<div style="background:url(javascript:alert(1))">x</div>',
        "[x](vbscript:msgbox)",
        "[mail](mailto:someone@example.com)",
        "<someone@example.com>",
        "[home](/admin/)",
        "[same origin](https:admin/)",
        "[protocol relative](//evil.example/x)",
        "![pixel](javascript:alert(1))",
    ],
)
def test_hostile_reply_renders_inert(hostile: str) -> None:
    html = render_markdown(f"Before\n\n{hostile}\n\nAfter")
    assert_inert(html)
    assert "Before" in html and "After" in html


def test_script_tag_is_shown_as_text() -> None:
    html = render_markdown("<script>alert(1)</script>")
    assert elements(html) == [("p", {})]
    assert "&lt;script&gt;" in html


def test_event_handler_markup_is_shown_as_text() -> None:
    html = render_markdown("<img src=x onerror=alert(1)>")
    assert elements(html) == [("p", {})]


def test_javascript_link_is_not_a_link() -> None:
    html = render_markdown("[click me](javascript:alert(1))")
    assert [tag for tag, _ in elements(html)] == ["p"]


def test_markdown_formatting_survives() -> None:
    html = render_markdown(
        "# Title\n\n**bold** and *em* and `code`\n\n- one\n- two\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n[site](https://example.com)\n\n```\nx = 1\n```"
    )
    assert "<h1>Title</h1>" in html
    assert "<strong>bold</strong>" in html and "<em>em</em>" in html and "<code>code</code>" in html
    assert "<li>one</li>" in html and "<table>" in html and "<pre><code>x = 1" in html
    assert (
        "a",
        {"href": "https://example.com", "rel": "noopener noreferrer nofollow"},
    ) in elements(html)
    assert_inert(html)


def test_images_are_not_loaded_automatically() -> None:
    html = render_markdown("![logo](https://example.com/logo.png)")
    assert "img" not in [tag for tag, _ in elements(html)]


def test_an_image_becomes_a_link_labelled_with_its_alt_text() -> None:
    html = render_markdown("See ![the logo](https://example.com/logo.png).")
    assert elements(html) == [
        ("p", {}),
        (
            "a",
            {"href": "https://example.com/logo.png", "rel": "noopener noreferrer nofollow"},
        ),
    ]
    assert ">the logo</a>" in html


@pytest.mark.parametrize(
    "link",
    [
        "[mail](mailto:someone@example.com)",
        "<someone@example.com>",
        "[page](/conversations/)",
        "[anchor](#top)",
        "[protocol relative](//evil.example/x)",
        "[scheme relative](https:admin/)",
        "[ftp](ftp://example.com/file)",
        "[tel](tel:+4930123)",
    ],
)
def test_only_absolute_http_and_https_links_are_links(link: str) -> None:
    html = render_markdown(link)
    assert [tag for tag, _ in elements(html)] == ["p"], html
    # Shown as the text the model wrote, so the reader still sees the target.
    assert unescape(html.removeprefix("<p>").removesuffix("</p>\n")) == link


@pytest.mark.parametrize(
    "link", ["https://example.com/a?b=c#d", "http://example.com", "HTTPS://EXAMPLE.COM/x"]
)
def test_http_and_https_links_keep_their_target_and_rel(link: str) -> None:
    html = render_markdown(f"[site]({link})")
    [(_, _), (tag, attrs)] = elements(html)
    assert tag == "a" and attrs["rel"] == "noopener noreferrer nofollow"
    assert (attrs["href"] or "").lower() == link.lower()
