"""Fenced code in replies: highlighted on the server with CSS classes only, bounded, inert.

The colours are a committed static stylesheet (static/css/code.css); a test checks it is
what `manage.py code_css` generates.
"""

from __future__ import annotations

import time
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from conversations import code_styles
from conversations.rendering import (
    HIGHLIGHT_MAX_CHARS,
    HIGHLIGHT_MAX_LINES,
    TOKEN_CLASSES,
    fence_language,
    render_markdown,
)
from conversations.tests.test_rendering import assert_inert, elements


class Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def text_of(html: str) -> str:
    parser = Text()
    parser.feed(html.removesuffix("\n"))  # the newline after </pre>
    return "".join(parser.parts)


def spans(html: str) -> list[dict[str, str | None]]:
    return [attrs for tag, attrs in elements(html) if tag == "span"]


def test_python_block_is_highlighted_with_classes() -> None:
    html = render_markdown('```python\nimport os\nname = "x"  # note\n```')
    assert '<pre><code class="hl language-python">' in html
    found = spans(html)
    assert found, html
    classes = {attrs["class"] for attrs in found}
    assert {"kn", "nn", "s2", "c1"} <= classes, classes
    assert text_of(html) == 'import os\nname = "x"  # note\n'


def test_highlighted_code_has_no_style_attributes_and_only_token_classes() -> None:
    html = render_markdown("```js\nconst a = `x${1}`; // c\n```\n\n```sql\nSELECT 1;\n```")
    for tag, attrs in elements(html):
        assert "style" not in attrs, html
        if tag == "span":
            assert set(attrs) == {"class"}
            assert attrs["class"] in TOKEN_CLASSES
    assert_inert(html)


def test_language_aliases_work_and_case_does_not_matter() -> None:
    assert spans(render_markdown("```Bash\necho hi\n```"))
    assert spans(render_markdown("```py\nx = 1\n```"))


@pytest.mark.parametrize("info", ["", "nosuchlanguage", "text-but-unknown-123"])
def test_unknown_or_missing_language_is_shown_plain(info: str) -> None:
    html = render_markdown(f"```{info}\nif x: <b>y</b>\n```")
    assert spans(html) == []
    assert "&lt;b&gt;" in html
    assert text_of(html) == "if x: <b>y</b>\n"


def test_the_language_is_never_guessed_from_the_content() -> None:
    html = render_markdown("```\nimport os\ndef f(): return 1\n```")
    assert spans(html) == [] and "<pre><code>" in html


@pytest.mark.parametrize(
    "info",
    [
        '"><script>alert(1)</script>',
        'python" onmouseover="alert(1)',
        "python onclick=alert(1)",
        "<img src=x onerror=alert(1)>",
        "javascript:alert(1)",
        "python\x00",
        "a" * 200,
    ],
)
def test_hostile_info_strings_render_inert(info: str) -> None:
    html = render_markdown(f"```{info}\nprint(1)\n```")
    assert_inert(html)
    for _, attrs in elements(html):
        assert set(attrs) <= {"class"}, html
    assert "print(1)" in text_of(html)
    code = [attrs for tag, attrs in elements(html) if tag == "code"]
    assert len(code) == 1
    assert all(" " not in cls or cls.startswith("hl ") for cls in [code[0].get("class") or ""])


def test_fence_language_takes_the_first_word_of_a_plausible_name() -> None:
    assert fence_language("python title=x.py") == "python"
    assert fence_language("  C++ ") == "c++"
    assert fence_language('"><script>') == ""
    assert fence_language("") == ""


def test_huge_blocks_are_shown_plain_and_fast() -> None:
    long_block = "x = 1\n" * (HIGHLIGHT_MAX_LINES + 1)
    html = render_markdown(f"```python\n{long_block}```")
    assert spans(html) == []
    assert text_of(html) == long_block

    wide = "y" * (HIGHLIGHT_MAX_CHARS + 1)
    started = time.monotonic()
    html = render_markdown(f"```python\n{wide}\n```")
    assert spans(html) == []
    assert time.monotonic() - started < 2


def test_a_block_just_under_the_limits_is_highlighted() -> None:
    block = "x = 1\n" * (HIGHLIGHT_MAX_LINES - 1)
    assert spans(render_markdown(f"```python\n{block}```"))


def test_a_span_smuggled_through_the_sanitiser_keeps_no_foreign_class() -> None:
    # Raw HTML is escaped by markdown-it anyway; the allow-list is the second wall.
    html = render_markdown('<span class="evil k" style="color:red" onclick="x()">t</span>')
    assert "<span" not in html


def test_committed_code_css_is_what_the_generator_produces() -> None:
    committed = code_styles.stylesheet_path().read_text(encoding="utf-8")
    assert committed == code_styles.code_css(), "run `manage.py code_css` and commit the result"
    call_command("code_css", "--check")


def test_code_css_check_fails_when_out_of_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "code.css"
    stale.write_text("/* old */")
    monkeypatch.setattr(code_styles, "stylesheet_path", lambda: stale)
    monkeypatch.setattr("conversations.management.commands.code_css.stylesheet_path", lambda: stale)
    with pytest.raises(CommandError, match="out of date"):
        call_command("code_css", "--check")
    call_command("code_css")
    call_command("code_css", "--check")
    assert stale.read_text() == code_styles.code_css()


def test_code_css_has_light_and_dark_rules_with_readable_contrast() -> None:
    css = code_styles.code_css()
    assert ".hl .k {" in css
    assert ':root[data-theme="dark"] .hl .k {' in css
    assert "@media (prefers-color-scheme: dark)" in css
    for line in css.splitlines():
        if "color: #" not in line:
            continue
        colour = line.split("color: ", 1)[1][:7]
        background = (
            code_styles.DARK_BACKGROUND if ":root" in line else code_styles.LIGHT_BACKGROUND
        )
        assert code_styles.contrast(colour, background) >= 4.5, line


def test_unescaped_code_text_round_trips() -> None:
    source = 'a = "<tag>" & b\n'
    html = render_markdown(f"```python\n{source}```")
    assert unescape(text_of(html)) == source
