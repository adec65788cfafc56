"""The serving processes refuse a database role that could rewrite the audit trail quietly.

On PostgreSQL the web server (`manage.py serve`), the Celery workers and beat check their
role before they start: a superuser bypasses every trigger and privilege; the owner of the
audit tables (or a member of the owning role) can disable the append-only triggers or drop
the tables; a role holding TRUNCATE on them empties them without touching a row. Any of these
refuses the start, with a message naming the documented role setup (docs/audit.md, "Database
roles"), unless DATABASE_ALLOW_PRIVILEGED_ROLE=true — for development and tests only.
`manage.py migrate` runs as the owner by design and does not check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)

ROLE_SETUP_DOCS = 'docs/audit.md, "Database roles"'


class PrivilegedRoleError(Exception):
    """The database role may rewrite the audit trail; the message says why and what to do."""


@dataclass(frozen=True)
class RoleReport:
    role: str
    superuser: bool = False
    owns: list[str] = field(default_factory=list)  # audit tables it owns (or its role does)
    may_truncate: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        found = []
        if self.superuser:
            found.append("is a superuser")
        if self.owns:
            found.append(f"owns {', '.join(self.owns)}")
        if self.may_truncate and not (self.superuser or self.owns):
            found.append(f"may TRUNCATE {', '.join(self.may_truncate)}")
        return found


def audit_tables() -> list[str]:
    """Every table of the audit app (events, checkpoints, anchors and any added later)."""
    from django.apps import apps

    return sorted(model._meta.db_table for model in apps.get_app_config("audit").get_models())


def role_inspect(alias: str = "default") -> RoleReport | None:
    """What the connection's role may do to the audit tables; None off PostgreSQL."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return None
    tables = audit_tables()
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        role, superuser = cursor.fetchone()
        # Owner privileges belong to every member of the owning role (MEMBER: may SET ROLE).
        cursor.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = ANY(%s) AND n.nspname = ANY(current_schemas(false)) "
            "AND pg_has_role(c.relowner, 'MEMBER') ORDER BY c.relname",
            [tables],
        )
        owns = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NOT NULL "
            "AND has_table_privilege(t, 'TRUNCATE') ORDER BY t",
            [tables],
        )
        may_truncate = [row[0] for row in cursor.fetchall()]
    if not connection.in_atomic_block:
        connection.close()  # not kept for serving (and never inherited by forked children)
    return RoleReport(role=role, superuser=bool(superuser), owns=owns, may_truncate=may_truncate)


def role_check(*, process: str, allow: bool | None = None) -> RoleReport | None:
    """Refuse to run `process` (e.g. "the web server") as a privileged role.

    Returns the report (None off PostgreSQL). Raises PrivilegedRoleError with a message for
    the operator — the role, what it may do, the documented setup and the setting — unless
    allowed (`allow`, by default DATABASE_ALLOW_PRIVILEGED_ROLE), in which case it logs a
    warning instead. Database errors propagate (the process cannot serve without one).
    """
    report = role_inspect()
    if report is None or not report.problems:
        return report
    allowed = settings.DATABASE_ALLOW_PRIVILEGED_ROLE if allow is None else allow
    reason = f'the database role "{report.role}" {" and ".join(report.problems)}'
    if allowed:
        logger.warning(
            "%s runs although %s: DATABASE_ALLOW_PRIVILEGED_ROLE=true (development only)",
            process,
            reason,
        )
        return report
    raise PrivilegedRoleError(
        f"Refusing to start {process}: {reason}, so it could rewrite or empty the audit trail "
        "unnoticed. Run migrations as the role that owns the tables and the application as a "
        f"role that owns none and holds no TRUNCATE ({ROLE_SETUP_DOCS}). For development "
        "only, DATABASE_ALLOW_PRIVILEGED_ROLE=true lets it start anyway."
    )
