"""Typed access to the environment, with `*_FILE` secrets.

Every setting is read through these helpers so that a bad value fails loudly at
start-up (a typo in a boolean is an error, not a silent False) and so that any
variable can be given as `NAME_FILE=/run/secrets/name` instead of `NAME=value`
(Docker and Kubernetes secrets). A file's trailing newline is stripped.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Env:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def raw(self, name: builtins.str) -> builtins.str | None:
        """The variable's value, from NAME or from the file NAME_FILE points at."""
        file_path = self._environ.get(f"{name}_FILE")
        if file_path:
            if name in self._environ:
                raise ImproperlyConfigured(f"Set {name} or {name}_FILE, not both.")
            try:
                return Path(file_path).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ImproperlyConfigured(
                    f"{name}_FILE points at {file_path!r}, which cannot be read ({exc.strerror})."
                ) from None
        return self._environ.get(name)

    def is_set(self, name: builtins.str) -> builtins.bool:
        value = self.raw(name)
        return value is not None and value.strip() != ""

    def str(self, name: builtins.str, default: builtins.str = "") -> builtins.str:
        value = self.raw(name)
        return default if value is None else value.strip()

    def bool(self, name: builtins.str, default: builtins.bool = False) -> builtins.bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}.")

    def int(
        self, name: builtins.str, default: builtins.int, *, min_value: builtins.int | None = None
    ) -> builtins.int:
        value = self.raw(name)
        if value is None or value.strip() == "":
            return default
        try:
            number = int(value.strip())
        except ValueError:
            raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}.") from None
        if min_value is not None and number < min_value:
            raise ImproperlyConfigured(f"{name} must be at least {min_value}, not {number}.")
        return number

    def float(
        self,
        name: builtins.str,
        default: builtins.float,
        *,
        min_value: builtins.float | None = None,
    ) -> builtins.float:
        value = self.raw(name)
        if value is None or value.strip() == "":
            return default
        try:
            number = float(value.strip())
        except ValueError:
            raise ImproperlyConfigured(f"{name} must be a number, not {value!r}.") from None
        if min_value is not None and number < min_value:
            raise ImproperlyConfigured(f"{name} must be at least {min_value}, not {number}.")
        return number

    def list(
        self, name: builtins.str, default: builtins.list[builtins.str] | None = None
    ) -> builtins.list[builtins.str]:
        value = self.raw(name)
        if value is None:
            return list(default or [])
        return [item.strip() for item in value.split(",") if item.strip()]
