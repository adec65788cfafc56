"""`manage.py code_css [--check]`: regenerate static/css/code.css, the colours of
highlighted code in the light and dark themes (conversations/code_styles.py).

Run it after upgrading Pygments or changing the styles, and commit the result. `--check`
changes nothing and fails if the committed file is out of date.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.code_styles import code_css, stylesheet_path


class Command(BaseCommand):
    help = "Regenerate static/css/code.css (highlighted code, light and dark) from Pygments."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check", action="store_true", help="Fail if the committed file is out of date."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = stylesheet_path()
        wanted = code_css()
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if options["check"]:
            if current != wanted:
                raise CommandError(f"{path} is out of date: run `manage.py code_css`.")
            self.stdout.write(f"{path} is up to date.")
            return
        path.write_text(wanted, encoding="utf-8")
        self.stdout.write(f"Wrote {path}.")
