"""Markdown to safe HTML for model replies.

Model output is untrusted. It is parsed as CommonMark with raw HTML disabled (markdown-it-py
escapes it), then the HTML is sanitised with nh3 (Ammonia) against an allow-list: no
scripts, no event handlers, no styles, and every link opens with
rel="noopener noreferrer nofollow".

Links: only absolute http and https URLs (`https://host/...`). Everything else — mailto,
javascript, data, other schemes, relative paths, fragments, protocol-relative `//host` and
scheme-relative `https:path` (which a browser resolves against our own origin) — is not a
link: Markdown shows it as the literal text the model wrote. A model has no reason to link
into this application, and a reply steered by injected content must not be able to.

Images: never an <img>, so nothing loads without a click (a remote image is a zero-click
channel out: its URL can carry the conversation to whoever serves it). `![alt](url)` becomes
a link to the image labelled with its alt text, under the same link rules.

Code: a fenced block whose info string names a language Pygments knows (by name or alias,
never by guessing from the content) is highlighted on the server as <span class="…"> tokens
only — no inline styles, which the Content-Security-Policy would refuse; the colours come from
static/css/code.css (conversations/code_styles.py). An unknown language, or a block over
HIGHLIGHT_MAX_CHARS / HIGHLIGHT_MAX_LINES, is shown plain so a huge reply costs no lexing.
The sanitiser stays the last step: span is allowed with Pygments' token classes only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from urllib.parse import urlsplit

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

LINK_SCHEMES = frozenset({"http", "https"})
LINK_REL = "noopener noreferrer nofollow"

# Past these sizes a code block is shown plain: lexing is linear but not cheap, and a reply
# can be long. Typical answers' blocks are far below both.
HIGHLIGHT_MAX_CHARS = 20_000
HIGHLIGHT_MAX_LINES = 500
# The class that scopes the token colours in static/css/code.css.
HIGHLIGHT_CLASS = "hl"
# What a fence's language may look like to become a `language-…` class (python, c++, c#,
# objective-c, shell-session, …); anything else is dropped.
_LANGUAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+#.-]{0,31}")
# Pygments' short token classes ("k", "s2", "c1", …): the only classes a <span> may carry.
TOKEN_CLASSES = frozenset(cls for cls in STANDARD_TYPES.values() if cls)
_FORMATTER = HtmlFormatter(nowrap=True, noclasses=False)


def is_safe_link(url: str) -> bool:
    """Whether `url` may be a link target: an absolute http(s) URL with a host, written
    plainly (no whitespace or control characters a browser would strip or skip)."""
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        return False
    scheme, _, rest = url.partition(":")
    if scheme.lower() not in LINK_SCHEMES or not rest.startswith("//"):
        return False
    try:
        return bool(urlsplit(url).hostname)
    except ValueError:  # a malformed port or IPv6 literal
        return False


class _SafeMarkdown(MarkdownIt):
    def validateLink(self, url: str) -> bool:  # markdown-it names it so
        return is_safe_link(url)


def _image_as_link(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    label = renderer.renderInlineAsText(token.children or [], options, env) or src
    # Only reached for links `_SafeMarkdown.validateLink` accepted; nh3 checks again.
    return f'<a href="{escapeHtml(src)}">{escapeHtml(label)}</a>'


@lru_cache(maxsize=64)
def _lexer(language: str) -> Lexer | None:
    """The lexer Pygments registers under `language` (name or alias), or None. Never guesses
    from the content (guess_lexer tries every lexer, some of them slow)."""
    try:
        return get_lexer_by_name(language, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return None


def fence_language(info: str) -> str:
    """The language a fence's info string names (its first word), or "" when it names
    none or something that is not a plausible language name."""
    first = info.strip().split(maxsplit=1)[0] if info.strip() else ""
    return first.lower() if _LANGUAGE.fullmatch(first) else ""


def highlight_code(code: str, language: str) -> str | None:
    """`code` as Pygments token spans (HTML, escaped), or None if it is to be shown plain:
    unknown language, or too large to be worth lexing."""
    if not language or len(code) > HIGHLIGHT_MAX_CHARS:
        return None
    if code.count("\n") > HIGHLIGHT_MAX_LINES:
        return None
    lexer = _lexer(language)
    if lexer is None:
        return None
    return highlight(code, lexer, _FORMATTER)


def _fence(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    token = tokens[idx]
    language = fence_language(token.info)
    highlighted = highlight_code(token.content, language)
    if highlighted is None:
        body = escapeHtml(token.content)
        classes = f"language-{language}" if language else ""
    else:
        body = highlighted
        classes = f"{HIGHLIGHT_CLASS} language-{language}"
    class_attribute = f' class="{escapeHtml(classes)}"' if classes else ""
    return f"<pre><code{class_attribute}>{body}</code></pre>\n"


_markdown = _SafeMarkdown("commonmark", {"html": False, "linkify": False, "typographer": False})
_markdown.enable(["table", "strikethrough"])
_markdown.add_render_rule("image", _image_as_link)
_markdown.add_render_rule("fence", _fence)

_ALLOWED_TAGS = {
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "li", "ol", "p", "pre", "s", "span", "strong", "table", "tbody", "td", "th", "thead", "tr",
    "ul",
}  # fmt: skip
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},
    "ol": {"start"},
    "td": {"align"},
    "th": {"align"},
}
# Highlighted code: a span may carry Pygments' token classes and nothing else.
_ALLOWED_CLASSES = {"span": set(TOKEN_CLASSES)}


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    # Defence in depth behind markdown-it: nh3 checks the scheme only, and would let
    # `https:path` (relative to our origin in a browser) through.
    if attribute == "href" and not is_safe_link(value):
        return None
    return value


def render_markdown(text: str) -> str:
    """Render a model's Markdown reply as sanitised HTML, safe to insert into a page."""
    html = _markdown.render(text)
    return nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        url_schemes=set(LINK_SCHEMES),
        url_relative="deny",
        attribute_filter=_attribute_filter,
        allowed_classes=_ALLOWED_CLASSES,
        link_rel=LINK_REL,
        strip_comments=True,
    )
