"""Property: whatever a model writes, render_markdown's HTML is inert.

Hypothesis builds replies that mix random text with the fragments attackers use (script
tags, event handlers, javascript:/data:/vbscript: links in Markdown and in raw HTML, entity
encoded and mixed-case schemes, whitespace and control characters inside schemes, SVG,
iframes, style attributes, images). The output is parsed with html.parser, as a browser
would tokenise it, and every element, attribute and link target is checked.
"""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conversations.rendering import TOKEN_CLASSES, render_markdown

ALLOWED_TAGS = {
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "li", "ol", "p", "pre", "s", "span", "strong", "table", "tbody", "td", "th", "thead", "tr",
    "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title", "rel"},
    "code": {"class"},
    "span": {"class"},  # Pygments' token classes only (checked below)
    "ol": {"start"},
    "td": {"align"},
    "th": {"align"},
}
FORBIDDEN_TAGS = {"script", "img", "iframe", "object", "embed", "svg", "math", "style", "form"}


class Tokens(HTMLParser):
    """Start tags with their (already entity-decoded) attributes, and any comments."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.comments: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)


def link_scheme(href: str) -> str:
    """The scheme a browser would see: C0 controls and spaces stripped, as the URL parser
    strips them at the ends and skips tab and newline inside."""
    cleaned = "".join(char for char in href if ord(char) > 0x20 and ord(char) != 0x7F)
    scheme, colon, _ = cleaned.partition(":")
    return scheme.lower() if colon and "/" not in scheme else ""


def problems(html: str) -> list[str]:
    """What in `html` a browser could act on that model output must never produce."""
    parser = Tokens()
    parser.feed(html)
    parser.close()
    found = [f"comment {c!r}" for c in parser.comments]
    for tag, attrs in parser.tags:
        if tag in FORBIDDEN_TAGS or tag not in ALLOWED_TAGS:
            found.append(f"element <{tag}>")
        for name, value in attrs:
            if name.startswith("on") or name in {"style", "src", "srcset", "srcdoc"}:
                found.append(f"attribute {name} on <{tag}>")
            elif name not in ALLOWED_ATTRIBUTES.get(tag, set()):
                found.append(f"unexpected attribute {name} on <{tag}>")
            if name == "href":
                target = "".join(c for c in value or "" if ord(c) > 0x20 and ord(c) != 0x7F)
                if link_scheme(target) not in {"http", "https"}:
                    found.append(f"href {value!r}")
                elif not target.split(":", 1)[1].startswith("//"):
                    found.append(f"scheme-relative href {value!r}")
            if tag == "span" and name == "class" and value not in TOKEN_CLASSES:
                found.append(f"span class {value!r}")
            if name == "rel" and value != "noopener noreferrer nofollow":
                found.append(f"rel {value!r}")
        if tag == "a" and "rel" not in dict(attrs):
            found.append("link without rel")
    return found


# --- Strategies -----------------------------------------------------------------------------

SCHEMES = ["javascript", "vbscript", "data", "file", "mailto", "ftp", "http", "https", "blob"]
PAYLOADS = ["alert(1)", "text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==", "//evil.example/x"]
FRAGMENTS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    '<img src="https://evil.example/pixel.png">',
    "<svg onload=alert(1)><circle/></svg>",
    "<svg><a xlink:href='javascript:alert(1)'><text>x</text></a></svg>",
    "<iframe src=https://evil.example></iframe>",
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    "<object data=javascript:alert(1)></object>",
    "<embed src=javascript:alert(1)>",
    '<div style="background:url(javascript:alert(1))">x</div>',
    '<p style="position:fixed;top:0">overlay</p>',
    '<a href="javascript:alert(1)">x</a>',
    '<a href="&#106;avascript:alert(1)">x</a>',
    '<a href="&#x6A;&#x61;vascript&colon;alert(1)">x</a>',
    '<a href="jav&#x09;ascript:alert(1)">x</a>',
    "<a href=' javascript:alert(1)'>x</a>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<!-- comment --><form action=https://evil.example><button>go</button></form>",
    "<style>body{display:none}</style>",
    '"><img src=x onerror=alert(1)>',
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](&#106;avascript:alert(1))",
    "[x](java\nscript:alert(1))",
    "[x]( javascript:alert(1) )",
    "[x](<javascript:alert(1)>)",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![x](https://evil.example/pixel.png)",
    '![x](https://evil.example/p.png "title onerror=alert(1)")',
    "![x](javascript:alert(1))",
    "<javascript:alert(1)>",
    "<https://example.com/ok>",
    "[ref]\n\n[ref]: javascript:alert(1)",
    "[ref]\n\n[ref]: https://example.com/ok",
    "[x](https:admin/)",
    "[x](//evil.example)",
    "[x](#top)",
    "```html\n<script>alert(1)</script>\n```",
    "`<img src=x onerror=alert(1)>`",
    "| a | b |\n|---|---|\n| <script>x</script> | [x](javascript:y) |",
    "> <iframe src=x>",
    "- [x](vbscript:msgbox)\n- <svg/onload=alert(1)>",
]


@st.composite
def mangled_scheme(draw: st.DrawFn) -> str:
    """A scheme as an attacker writes it: mixed case, entity-encoded letters, and
    whitespace or control characters slipped in."""
    scheme = draw(st.sampled_from(SCHEMES))
    out = []
    for char in scheme:
        choice = draw(st.integers(0, 9))
        if choice == 0:
            out.append(char.upper())
        elif choice == 1:
            out.append(f"&#{ord(char)};")
        elif choice == 2:
            out.append(f"&#x{ord(char):x};")
        elif choice == 3:
            out.append(draw(st.sampled_from(["\t", "\n", "\r", "\x00", "\x01", " ", "%0a"])))
            out.append(char)
        else:
            out.append(char)
    colon = draw(st.sampled_from([":", "&colon;", "&#58;", "&#x3a;", "%3a"]))
    return "".join(out) + colon


@st.composite
def hostile_link(draw: st.DrawFn) -> str:
    url = draw(mangled_scheme()) + draw(st.sampled_from(PAYLOADS))
    label = draw(st.text(max_size=8))
    form = draw(st.integers(0, 5))
    if form == 0:
        return f"[{label}]({url})"
    if form == 1:
        return f"![{label}]({url})"
    if form == 2:
        return f"<{url}>"
    if form == 3:
        quote = draw(st.sampled_from(['"', "'", ""]))
        return f"<a href={quote}{url}{quote}>{label}</a>"
    if form == 4:
        return f"[{label}][r]\n\n[r]: {url}"
    return f'<img src="{url}" onerror="alert(1)">'


replies = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        hostile_link(),
        st.text(max_size=40),
        st.text(alphabet="<>\"'`=&#;:/[]()!*_-|\\\n \t", max_size=30),
    ),
    max_size=8,
).flatmap(
    lambda parts: st.lists(
        st.sampled_from(["", " ", "\n", "\n\n", "    ", "> ", "- "]),
        min_size=len(parts),
        max_size=len(parts),
    ).map(lambda seps: "".join(sep + part for sep, part in zip(seps, parts, strict=True)))
)


@settings(max_examples=300, deadline=None)
@given(replies)
@example("[ok](https://example.com) and [bad](javascript:alert(1))")
@example('<a href="&#106;avascript:alert(1)">x</a>')
def test_any_reply_renders_inert(reply: str) -> None:
    html = render_markdown(reply)
    assert problems(html) == [], (reply, html)


# The checker must be able to fail: feed it what a broken renderer would produce.
@pytest.mark.parametrize(
    "unsafe",
    [
        "<script>alert(1)</script>",
        '<p onclick="x">a</p>',
        '<p style="color:red">a</p>',
        '<img src="https://evil.example/p.png">',
        "<iframe></iframe>",
        "<svg></svg>",
        "<object></object>",
        "<embed>",
        '<a href="javascript:alert(1)" rel="noopener noreferrer nofollow">x</a>',
        '<a href="&#106;avascript:alert(1)" rel="noopener noreferrer nofollow">x</a>',
        '<a href="java&#10;script:alert(1)" rel="noopener noreferrer nofollow">x</a>',
        '<a href=" JAVASCRIPT:alert(1)" rel="noopener noreferrer nofollow">x</a>',
        '<a href="data:text/html,x" rel="noopener noreferrer nofollow">x</a>',
        '<a href="mailto:a@b.c" rel="noopener noreferrer nofollow">x</a>',
        '<a href="https:admin" rel="noopener noreferrer nofollow">x</a>',
        '<a href="https://example.com">no rel</a>',
    ],
)
def test_the_checker_catches_unsafe_html(unsafe: str) -> None:
    assert problems(unsafe)


def test_the_checker_accepts_safe_links() -> None:
    html = render_markdown("[a](https://example.com/x) <http://example.com>")
    assert problems(html) == []
    assert html.count("<a ") == 2
