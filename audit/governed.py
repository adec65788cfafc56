"""Governed models: queryset-level writes on them are audited, never silent.

Instance saves of people, roles, the guardrail policy, the model catalogue, prices, budgets
and messages are recorded by the services and the console that make them. Queryset writes —
`update()`, `delete()`, `bulk_create()`, `bulk_update()`, `update_or_create()` — send no
signal and bypass those services, so on a governed model each one records a `data.bulk_write`
event in the same transaction: the model, the operation, the field names (never values),
the number of rows and their ids (public ids where the model has them; capped at
BULK_IDS_MAX). For Django's own tables (groups and the user↔group, user↔permission and
group↔permission memberships) the managers are governed when the audit app is ready.

The product's own services that already audit what they do — the chat's reply claim,
heartbeat and finish, the interrupted-reply sweeper, conversation deletion, legal hold, the
console's "delete selected" — run their bulk writes inside `governed_writes(reason=...)`, so
one chat reply adds no event beyond the ones it always had.

This is a guard in the application, not against whoever holds the database: raw SQL and
private ORM methods bypass it. The database role setup (docs/audit.md) is what limits those.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.contrib.auth.models import UserManager
from django.db import models, router, transaction

BULK_IDS_MAX = 100

# Models whose queryset writes are governed, by label. Django's own auth tables are governed
# by `install()`; the product's models declare a governed manager as well.
GOVERNED_MODELS = (
    "accounts.User",
    "accounts.User_groups",
    "accounts.User_user_permissions",
    "auth.Group",
    "auth.Group_permissions",
    "guardrails.GuardrailPolicy",
    "providers.AIModel",
    "providers.AIModel_allowed_groups",
    "costs.ModelPrice",
    "costs.Budget",
    "conversations.Message",
)

_reason: ContextVar[str | None] = ContextVar("governed_writes_reason", default=None)
# Set while a governed operation runs, so that the writes it makes itself (bulk_update runs
# update() per batch) are not recorded twice.
_inside: ContextVar[bool] = ContextVar("governed_write_inside", default=False)


@contextmanager
def governed_writes(*, reason: str) -> Iterator[None]:
    """Queryset writes on governed models inside this block record no `data.bulk_write`
    event: the caller audits what it does itself. Also usable as a decorator.

    `reason` says which service takes responsibility (for readers and debugging). Raises
    ValueError when it is empty.
    """
    if not reason or not reason.strip():
        raise ValueError("governed_writes needs a reason")
    token = _reason.set(reason)
    try:
        yield
    finally:
        _reason.reset(token)


def current_reason() -> str | None:
    """The reason of the enclosing `governed_writes` block, or None outside one."""
    return _reason.get()


@contextmanager
def _operation() -> Iterator[None]:
    token = _inside.set(True)
    try:
        yield
    finally:
        _inside.reset(token)


def _exempt() -> bool:
    return _inside.get() or _reason.get() is not None


def _identity_fields(model: type[models.Model]) -> list[str]:
    """What identifies a row in an event: both sides of a membership, else the public id,
    else the primary key."""
    opts = model._meta
    if opts.auto_created:  # a many-to-many table: (user, group), (group, permission), …
        return [field.attname for field in opts.concrete_fields if field.is_relation]
    names = {field.name for field in opts.concrete_fields}
    return ["public_id"] if "public_id" in names else ["pk"]


def _identity(values: Sequence[Any]) -> Any:
    return str(values[0]) if len(values) == 1 else [str(value) for value in values]


def _ids_of(objs: Iterable[models.Model], fields: list[str]) -> list[Any]:
    out = []
    for obj in objs:
        out.append(_identity([getattr(obj, name) for name in fields]))
        if len(out) > BULK_IDS_MAX:
            break
    return out


def _record(
    model: type[models.Model],
    *,
    operation: str,
    count: int,
    ids: list[Any],
    fields: Iterable[str] = (),
    extra: dict[str, Any] | None = None,
) -> None:
    from audit.catalogue import AuditAction, TargetType
    from audit.services import _TARGET_TYPES, audit_record

    label = model._meta.label_lower
    target_type = _TARGET_TYPES.get(label, TargetType.OTHER)
    single = count == 1 and len(ids) == 1 and isinstance(ids[0], str)
    audit_record(
        action=AuditAction.BULK_WRITE,
        target=(target_type, ids[0] if single else ""),
        details={
            "model": label,
            "operation": operation,
            "fields": sorted(set(fields)),
            "count": count,
            "ids": ids[:BULK_IDS_MAX],
            "ids_truncated": len(ids) > BULK_IDS_MAX or count > len(ids),
            **(extra or {}),
        },
    )


class GovernedQuerySetMixin:
    """Audits queryset writes (see the module docstring). Mixed into a model's QuerySet."""

    model: type[models.Model]
    _db: str | None
    _hints: dict[str, Any]

    def _write_alias(self) -> str:
        return self._db or router.db_for_write(self.model, **self._hints)

    def _preview_ids(self) -> list[Any]:
        fields = _identity_fields(self.model)
        rows = self.values_list(*fields)[: BULK_IDS_MAX + 1]  # type: ignore[attr-defined]
        return [_identity(row) for row in rows]

    def update(self, **kwargs: Any) -> int:
        if _exempt():
            return super().update(**kwargs)  # type: ignore[misc]
        with transaction.atomic(using=self._write_alias()), _operation():
            ids = self._preview_ids()
            count: int = super().update(**kwargs)  # type: ignore[misc]
            if count:
                _record(self.model, operation="update", count=count, ids=ids, fields=kwargs)
        return count

    def delete(self) -> tuple[int, dict[str, int]]:
        if _exempt():
            return super().delete()  # type: ignore[misc]
        with transaction.atomic(using=self._write_alias()), _operation():
            ids = self._preview_ids()
            total, per_model = super().delete()  # type: ignore[misc]
            label = self.model._meta.label
            count = per_model.get(label, 0)
            if total:
                cascade = {name: n for name, n in per_model.items() if name != label and n}
                _record(
                    self.model,
                    operation="delete",
                    count=count,
                    ids=ids,
                    extra={"cascade": cascade} if cascade else None,
                )
        return total, per_model

    def bulk_create(self, objs: Iterable[Any], *args: Any, **kwargs: Any) -> list[Any]:
        if _exempt():
            return super().bulk_create(objs, *args, **kwargs)  # type: ignore[misc]
        objs = list(objs)
        with transaction.atomic(using=self._write_alias()), _operation():
            created: list[Any] = super().bulk_create(objs, *args, **kwargs)  # type: ignore[misc]
            if created:
                fields = kwargs.get("update_fields") or ()
                _record(
                    self.model,
                    operation="bulk_create",
                    count=len(created),
                    ids=_ids_of(created, _identity_fields(self.model)),
                    fields=fields,
                    extra={"upsert": True} if kwargs.get("update_conflicts") else None,
                )
        return created

    def bulk_update(self, objs: Iterable[Any], fields: Sequence[str], *args: Any, **kw: Any) -> int:
        if _exempt():
            return super().bulk_update(objs, fields, *args, **kw)  # type: ignore[misc]
        objs = list(objs)
        with transaction.atomic(using=self._write_alias()), _operation():
            count: int = super().bulk_update(objs, fields, *args, **kw)  # type: ignore[misc]
            if count:
                _record(
                    self.model,
                    operation="bulk_update",
                    count=count,
                    ids=_ids_of(objs, _identity_fields(self.model)),
                    fields=fields,
                )
        return count

    def update_or_create(
        self, defaults: Any = None, create_defaults: Any = None, **kwargs: Any
    ) -> tuple[Any, bool]:
        if _exempt():
            return super().update_or_create(  # type: ignore[misc]
                defaults=defaults, create_defaults=create_defaults, **kwargs
            )
        with transaction.atomic(using=self._write_alias()), _operation():
            obj, created = super().update_or_create(  # type: ignore[misc]
                defaults=defaults, create_defaults=create_defaults, **kwargs
            )
            written = (
                create_defaults if created and create_defaults is not None else defaults
            ) or {}
            _record(
                self.model,
                operation="update_or_create",
                count=1,
                ids=_ids_of([obj], _identity_fields(self.model)),
                fields=[*written, *kwargs] if created else written,
                extra={"created": created},
            )
        return obj, created


# As Django marks its own: they change data (templates never call them), and delete() stays
# off the manager (`Model.objects.delete()` would delete every row).
for _name in ("update", "delete", "bulk_create", "bulk_update", "update_or_create"):
    getattr(GovernedQuerySetMixin, _name).alters_data = True
GovernedQuerySetMixin.delete.queryset_only = True  # type: ignore[attr-defined]


class GovernedQuerySet(GovernedQuerySetMixin, models.QuerySet):  # type: ignore[misc]
    pass


class GovernedManager(models.Manager.from_queryset(GovernedQuerySet)):  # type: ignore[misc]
    """The default manager of a governed model (see the module docstring)."""


class GovernedUserManager(UserManager.from_queryset(GovernedQuerySet)):  # type: ignore[misc]
    """Django's UserManager (create_user, …) with governed queryset writes."""

    # Migrations see Django's UserManager (historical models need no audit): the same path
    # and equality, so the migration state is unchanged and no migration is needed.
    use_in_migrations = True

    def deconstruct(self) -> Any:
        _, _, qs, args, kwargs = super().deconstruct()
        return False, "django.contrib.auth.models.UserManager", qs, args, kwargs

    def __eq__(self, other: object) -> bool:
        mine, theirs = (getattr(m, "_constructor_args", None) for m in (self, other))
        return isinstance(other, UserManager) and mine == theirs

    __hash__ = UserManager.__hash__


def is_governed(model: type[models.Model]) -> bool:
    """Whether every manager of `model` hands out governed querysets."""
    return all(
        issubclass(getattr(manager, "_queryset_class", object), GovernedQuerySetMixin)
        for manager in model._meta.managers
    )


def _govern_manager(manager: Any) -> None:
    queryset_class = manager._queryset_class
    if not issubclass(queryset_class, GovernedQuerySetMixin):
        manager._queryset_class = type(
            f"Governed{queryset_class.__name__}", (GovernedQuerySetMixin, queryset_class), {}
        )


def install() -> None:
    """Govern every model in GOVERNED_MODELS (called from AuditConfig.ready).

    For models whose class the product does not own (Django's groups and many-to-many
    tables) the managers' queryset class is replaced; the product's own models already
    declare a governed manager and are left as they are.
    """
    from django.apps import apps

    for label in GOVERNED_MODELS:
        model = apps.get_model(label)
        # local_managers are the originals that Options.managers copies on every cache reset.
        for manager in [*model._meta.local_managers, *model._meta.managers]:
            _govern_manager(manager)
