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
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

LINK_SCHEMES = frozenset({"http", "https"})
LINK_REL = "noopener noreferrer nofollow"


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


_markdown = _SafeMarkdown("commonmark", {"html": False, "linkify": False, "typographer": False})
_markdown.enable(["table", "strikethrough"])
_markdown.add_render_rule("image", _image_as_link)

_ALLOWED_TAGS = {
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "li", "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},
    "ol": {"start"},
    "td": {"align"},
    "th": {"align"},
}


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
        link_rel=LINK_REL,
        strip_comments=True,
    )
