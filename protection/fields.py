"""Encrypted model fields: every write path seals, every read opens, in one place.

`EncryptedTextField` and `EncryptedJSONField` store `enc:` + base64 of an AES-256-GCM blob
(protection.aead) sealed under the month's data key (protection.datakeys). Because the work
happens in `get_prep_value` / `from_db_value`, `save()`, `QuerySet.update()`,
`bulk_create()`, `.values()` and `.only()` all encrypt or decrypt; the associated data is the
model and column ("conversations.message.content"), so a value moved to another column does
not open.

SQL cannot compare encrypted values, so the fields refuse it: the only lookups are `isnull`
and equality with the empty string (an empty value is stored empty, which says no more than
the row's status already does). `filter(title__icontains=...)` raises FieldError instead of
silently matching nothing.

A value that does not open (altered ciphertext, a data key or master key not available) is
read as an `Unreadable` value: the text says so with a machine code, never a stack trace,
and the failure is logged without secrets. Saving an `Unreadable` value writes back the
stored ciphertext unchanged, so reading a damaged row never destroys it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.core.exceptions import FieldError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models.lookups import Exact, IsNull

from protection import datakeys
from protection.aead import ProtectionError

logger = logging.getLogger("protection")

UNREADABLE_TEXT = "[This text cannot be read ({code}). Quote the code to an administrator.]"


class Unreadable(str):
    """Text stored encrypted that could not be opened. `code`: ciphertext_tampered or
    key_unavailable. `stored`: the stored value, written back unchanged on save."""

    code: str
    stored: str

    def __new__(cls, *, code: str, stored: str) -> Unreadable:
        value = super().__new__(cls, UNREADABLE_TEXT.format(code=code))
        value.code = code
        value.stored = stored
        return value


class UnreadableList(list[Any]):
    """An encrypted JSON list that could not be opened (empty; see `Unreadable`)."""

    code: str
    stored: str


class UnreadableDict(dict[str, Any]):
    """An encrypted JSON object that could not be opened (empty; see `Unreadable`)."""

    code: str
    stored: str


def unreadable_code(value: object) -> str:
    """The error code when `value` was read from a row that could not be opened, else ""."""
    return str(getattr(value, "code", "")) if hasattr(value, "stored") else ""


class _EmptyOnlyExact(Exact):
    """`field=""` only: an encrypted column cannot be compared with any other text."""

    def get_prep_lookup(self) -> Any:
        if self.rhs != "" and not hasattr(self.rhs, "resolve_expression"):
            raise FieldError(
                f"{self.lhs.target.model.__name__}.{self.lhs.target.name} is encrypted: it can "
                "only be compared with the empty string. Filter by ids and compare in Python."
            )
        return super().get_prep_lookup()


class _EncryptedMixin:
    """What both encrypted fields share: the associated data and the refused lookups."""

    name: str
    model: type[models.Model]

    def aad(self) -> bytes:
        return f"{self.model._meta.label_lower}.{self.name}".encode()

    def get_lookup(self, lookup_name: str) -> Any:
        if lookup_name == "exact":
            return _EmptyOnlyExact
        if lookup_name == "isnull":
            return IsNull
        return None

    def get_transform(self, lookup_name: str) -> Any:
        return None

    def _log_unreadable(self, exc: ProtectionError) -> None:
        # The column and the reason only: never the value, the key or the plaintext.
        logger.error(
            "encrypted value unreadable: %s (%s)",
            self.aad().decode(),
            exc.code,
            extra={"error_code": exc.code},
        )


class EncryptedTextField(_EncryptedMixin, models.TextField):
    description = "Text, encrypted at rest"

    def get_prep_value(self, value: Any) -> Any:
        if isinstance(value, Unreadable):
            return value.stored
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return datakeys.seal_bytes(str(value).encode("utf-8"), aad=self.aad())

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if value is None or value == "":
            return value
        try:
            return datakeys.open_bytes(value, aad=self.aad()).decode("utf-8")
        except ProtectionError as exc:
            self._log_unreadable(exc)
            return Unreadable(code=exc.code, stored=value)

    def to_python(self, value: Any) -> Any:
        return value if isinstance(value, Unreadable) else super().to_python(value)


class EncryptedJSONField(_EncryptedMixin, models.TextField):
    """JSON (a list or an object) encrypted at rest; stored as text in the database."""

    description = "JSON, encrypted at rest"
    # For django-stubs: the attribute is JSON (list or dict), not the column's text.
    _pyi_private_set_type: Any
    _pyi_private_get_type: Any

    def get_prep_value(self, value: Any) -> Any:
        stored = getattr(value, "stored", None)
        if isinstance(value, UnreadableList | UnreadableDict) and stored is not None:
            return stored
        if value is None:
            return None
        text = json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False, sort_keys=True)
        return datakeys.seal_bytes(text.encode("utf-8"), aad=self.aad())

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if value is None:
            return None
        if value == "":
            return self.get_default()
        try:
            return json.loads(datakeys.open_bytes(value, aad=self.aad()))
        except ProtectionError as exc:
            self._log_unreadable(exc)
            empty = self.get_default()
            unreadable: UnreadableList | UnreadableDict = (
                UnreadableList() if isinstance(empty, list) else UnreadableDict()
            )
            unreadable.code = exc.code
            unreadable.stored = value
            return unreadable
        except ValueError:
            unreadable_dict = UnreadableDict()
            unreadable_dict.code, unreadable_dict.stored = "ciphertext_tampered", value
            return unreadable_dict

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise FieldError("Not valid JSON.") from None
        return value

    def value_to_string(self, obj: models.Model) -> str:
        return json.dumps(self.value_from_object(obj), cls=DjangoJSONEncoder)

    def formfield(self, **kwargs: Any) -> Any:
        from django.forms import JSONField as JSONFormField

        return super(models.TextField, self).formfield(
            **{"form_class": JSONFormField, "encoder": DjangoJSONEncoder, **kwargs}
        )
