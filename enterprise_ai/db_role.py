"""The serving processes never keep a database role that could rewrite the audit trail.

On PostgreSQL the web server (`manage.py serve`), the Celery workers and beat look at their
login role before they start: a superuser bypasses every trigger and privilege; the owner of
the audit tables (or a member of the owning role) can disable the append-only triggers or
drop the tables; a role holding TRUNCATE on them empties them without touching a row. What
then happens is DATABASE_PRIVILEGED_ROLE's choice:

- `demote` (the default), the way daemons drop privileges after binding their port: every
  connection the process opens runs `SET ROLE <DATABASE_APP_ROLE>` right after connecting
  (on Django's `connection_created`, pooled or not), and the check runs again as that
  role. A role that does not exist, may not be assumed, lacks the application's grants or
  is privileged itself refuses the start. `manage.py migrate`, run
  as a superuser or a role with CREATEROLE, creates that role and its grants
  (`app_role_ensure`, after every migrate).
- `refuse`: the start is refused, with a message naming the documented role setup
  (docs/audit.md, "Database roles"). Production with the documented login roles.
- `allow`: a warning only (development and tests; DATABASE_ALLOW_PRIVILEGED_ROLE=true).

`manage.py migrate` runs as the owner by design and does not check.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.dispatch import receiver

logger = logging.getLogger(__name__)

ROLE_SETUP_DOCS = 'docs/audit.md, "Database roles"'

#: The application's rights: on every table of the product, except the audit tables (read
#: and append only) and Django's migration history (read only).
APP_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
AUDIT_TABLE_PRIVILEGES = "SELECT, INSERT"
#: Audit tables that are not append-only, and the one further right each needs: the chainer
#: deletes the pending events it has linked into the chain (a trigger refuses any other
#: delete), and erasure destroys a person's audit key (audit/personal.py).
AUDIT_TABLE_EXTRA = {"audit_pendingauditevent": "DELETE", "audit_subjectkey": "UPDATE"}
MIGRATIONS_TABLE = "django_migrations"


def audit_table_privileges(table: str) -> str:
    """The application's rights on one audit table."""
    extra = AUDIT_TABLE_EXTRA.get(table)
    return f"{AUDIT_TABLE_PRIVILEGES}, {extra}" if extra else AUDIT_TABLE_PRIVILEGES


class PrivilegedRoleError(Exception):
    """The database role may rewrite the audit trail; the message says why and what to do."""


@dataclass(frozen=True)
class RoleReport:
    role: str
    superuser: bool = False
    owns: list[str] = field(default_factory=list)  # audit tables it owns (or its role does)
    may_truncate: list[str] = field(default_factory=list)
    login_role: str = ""  # session_user: differs from `role` once demoted

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


def _inspect(cursor: Any) -> RoleReport:
    """What the cursor's current role may do to the audit tables."""
    tables = audit_tables()
    cursor.execute(
        "SELECT current_user, session_user, rolsuper FROM pg_roles WHERE rolname = current_user"
    )
    role, login_role, superuser = cursor.fetchone()
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
    return RoleReport(
        role=role,
        superuser=bool(superuser),
        owns=owns,
        may_truncate=may_truncate,
        login_role=login_role,
    )


def _release(connection: BaseDatabaseWrapper) -> None:
    """Close the connection and its pool: none is kept for serving (nor inherited by forked
    children), and the next ones are opened, and configured, afresh."""
    if connection.in_atomic_block:
        return
    connection.close()
    if getattr(connection, "pool", None) is not None:
        connection.close_pool()  # type: ignore[attr-defined]


def role_inspect(alias: str = "default") -> RoleReport | None:
    """What the connection's role may do to the audit tables; None off PostgreSQL."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        report = _inspect(cursor)
    _release(connection)
    return report


def _grants_missing(cursor: Any, tables: list[str]) -> list[str]:
    """The product's tables on which the current role lacks one of the application's rights."""
    audit = set(audit_tables())
    wanted = [
        (table, privilege.strip())
        for table in tables
        for privilege in (
            "SELECT" if table == MIGRATIONS_TABLE
            else audit_table_privileges(table) if table in audit
            else APP_TABLE_PRIVILEGES
        ).split(",")
    ]  # fmt: skip
    if not wanted:
        return []
    # One privilege per call: has_table_privilege(t, 'A, B') is true when either is held.
    cursor.execute(
        "SELECT DISTINCT t FROM unnest(%s::text[], %s::text[]) AS w(t, p) "
        "WHERE NOT has_table_privilege(t, p) ORDER BY t",
        [[t for t, _ in wanted], [p for _, p in wanted]],
    )
    return [row[0] for row in cursor.fetchall()]


def _product_tables(connection: BaseDatabaseWrapper) -> list[str]:
    """The tables of the installed apps that exist, and Django's migration history."""
    tables = set(connection.introspection.django_table_names(only_existing=True))
    existing = set(connection.introspection.table_names(include_views=False))
    return sorted((tables | {MIGRATIONS_TABLE}) & existing)


def _refusal(process: str, reason: str) -> PrivilegedRoleError:
    return PrivilegedRoleError(
        f"Refusing to start {process}: {reason}. Run migrations as the role that owns the "
        "tables and the application as a role that owns none and holds no TRUNCATE "
        f"({ROLE_SETUP_DOCS}); with DATABASE_PRIVILEGED_ROLE=demote (the default) a "
        "privileged login runs as DATABASE_APP_ROLE instead, which `manage.py migrate` run as "
        "a superuser creates. For development only, DATABASE_PRIVILEGED_ROLE=allow lets it "
        "start anyway."
    )


def role_check(*, process: str, mode: str | None = None) -> RoleReport | None:
    """Never run `process` (e.g. "the web server") as a privileged role.

    `mode` (by default DATABASE_PRIVILEGED_ROLE): `demote` switches the process's connections
    to DATABASE_APP_ROLE (`role_demote`); `refuse` refuses; `allow` logs a warning. Returns
    the report of the role the process will run as (None off PostgreSQL). Raises
    PrivilegedRoleError with a message for the operator — the role, what it may do, the
    documented setup and the setting. Database errors of the first check propagate (the
    process cannot serve without a database).
    """
    report = role_inspect()
    if report is None or not report.problems:
        return report
    mode = mode or settings.DATABASE_PRIVILEGED_ROLE
    reason = f'the database role "{report.role}" {" and ".join(report.problems)}'
    if mode == "allow":
        logger.warning(
            "%s runs although %s: DATABASE_PRIVILEGED_ROLE=allow (development only)",
            process,
            reason,
        )
        return report
    if mode == "demote":
        return role_demote(process=process, login=report)
    raise _refusal(process, f"{reason}, so it could rewrite or empty the audit trail unnoticed")


def role_demote(*, process: str, login: RoleReport, alias: str = "default") -> RoleReport:
    """Make every connection of this process run as DATABASE_APP_ROLE (SET ROLE).

    Tried first on one connection: the role must exist, be assumable by the login role,
    hold the application's grants on every table of the product and be privileged in no
    way itself. From then on every connection Django opens for `alias` runs SET ROLE before
    its first query (`_assume_app_role`, on `connection_created`: a connection taken from
    psycopg-pool, a new one after CONN_MAX_AGE or a failed health check alike), and a fresh
    connection proves it. Raises PrivilegedRoleError otherwise.
    """
    app = settings.DATABASE_APP_ROLE
    connection = connections[alias]
    why = (
        f'the database role "{login.role}" {" and ".join(login.problems)}, and it cannot '
        f'run as the application role "{app}" (DATABASE_APP_ROLE)'
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [app])
            if cursor.fetchone() is None:
                raise _refusal(
                    process,
                    f"{why}: that role does not exist (`manage.py migrate` creates it when it "
                    "runs as a superuser or a role with CREATEROLE)",
                )
            cursor.execute(f"SET ROLE {connection.ops.quote_name(app)}")
            try:
                demoted = _inspect(cursor)
                missing = _grants_missing(cursor, _product_tables(connection))
            finally:
                cursor.execute("RESET ROLE")
    except DatabaseError as exc:
        _release(connection)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _refusal(process, f"{why}: SET ROLE failed ({detail})") from None
    except PrivilegedRoleError:
        _release(connection)
        raise
    _release(connection)
    if demoted.problems:
        raise _refusal(process, f'{why}: "{app}" {" and ".join(demoted.problems)} too')
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if missing[5:] else "")
        raise _refusal(
            process,
            f"{why}: it lacks the application's grants on {shown} (run `manage.py migrate` "
            "as a superuser, or grant them as the owner)",
        )

    # From now on, every connection of this process.
    _assumed[alias] = app
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        (current,) = cursor.fetchone()
    _release(connection)
    if current != app:
        raise _refusal(process, f"{why}: its connections still run as {current!r}")
    logger.warning(
        "%s runs as the database role %s (SET ROLE): its login role %s %s. A session can undo "
        "SET ROLE; production should log in as the documented application role (%s) with "
        "DATABASE_PRIVILEGED_ROLE=refuse.",
        process,
        app,
        login.role,
        " and ".join(login.problems),
        ROLE_SETUP_DOCS,
    )
    return demoted


#: alias -> the role its connections assume (set by `role_demote`, for the whole process).
_assumed: dict[str, str] = {}
#: The server connections (psycopg's, pooled ones kept across checkouts) already switched:
#: SET ROLE lasts for the session, so a pooled connection needs it once.
_switched: weakref.WeakSet[Any] = weakref.WeakSet()


@receiver(connection_created)
def _assume_app_role(sender: Any, connection: BaseDatabaseWrapper, **_: Any) -> None:
    """SET ROLE on each connection of a demoted alias, before Django runs a query on it.

    Django's own OPTIONS["assume_role"] cannot be used with its pool: the pool's configure
    callback composes the statement through a pooled connection and waits for itself.
    """
    role = _assumed.get(connection.alias)
    raw = connection.connection
    if role is None or raw is None or raw in _switched:
        return
    with raw.cursor() as cursor:
        cursor.execute(f"SET ROLE {connection.ops.quote_name(role)}")
    _switched.add(raw)


def app_role_ensure(*, using: str = "default", stdout: Any = None) -> bool:
    """Create DATABASE_APP_ROLE (NOLOGIN) if missing and grant it the application's rights.

    Runs after every `manage.py migrate` (a post_migrate receiver of the audit app), so new
    tables are covered: SELECT, INSERT, UPDATE, DELETE on the product's tables, SELECT and
    INSERT only on the audit tables (everything else revoked there, TRUNCATE included),
    SELECT on the migration history, USAGE on the schema and the tables' sequences — never
    TRUNCATE, never ownership. Only when the migrating role is a superuser or has
    CREATEROLE, and only on PostgreSQL; otherwise nothing is done and nothing said (the
    documented setup applies). Returns whether it ran.
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        return False
    app = settings.DATABASE_APP_ROLE
    quote = connection.ops.quote_name
    role = quote(app)
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")
        superuser, createrole = cursor.fetchone()
        if not (superuser or createrole):
            return False
        tables = _product_tables(connection)
        audit = set(audit_tables())
        with transaction.atomic(using=using):
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [app])
            created = cursor.fetchone() is None
            if created:
                try:
                    with transaction.atomic(using=using):  # another migrate may create it now
                        cursor.execute(f"CREATE ROLE {role} NOLOGIN")
                except DatabaseError:
                    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [app])
                    if cursor.fetchone() is None:
                        raise
                    created = False
            if not superuser:
                # A CREATEROLE login that also serves may then be demoted to the role.
                cursor.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", [app])
                if not cursor.fetchone()[0]:
                    cursor.execute(f"GRANT {role} TO CURRENT_USER")
            cursor.execute(
                "SELECT DISTINCT n.nspname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = ANY(%s) AND n.nspname = ANY(current_schemas(false))",
                [tables],
            )
            for (schema,) in cursor.fetchall():
                cursor.execute(f"GRANT USAGE ON SCHEMA {quote(schema)} TO {role}")
            plain = [quote(t) for t in tables if t not in audit and t != MIGRATIONS_TABLE]
            kept = [t for t in tables if t in audit]
            if plain:
                cursor.execute(f"GRANT {APP_TABLE_PRIVILEGES} ON {', '.join(plain)} TO {role}")
                cursor.execute(f"REVOKE TRUNCATE ON {', '.join(plain)} FROM {role}")
            if MIGRATIONS_TABLE in tables:
                cursor.execute(f"REVOKE ALL ON {quote(MIGRATIONS_TABLE)} FROM {role}")
                cursor.execute(f"GRANT SELECT ON {quote(MIGRATIONS_TABLE)} TO {role}")
            if kept:
                cursor.execute(f"REVOKE ALL ON {', '.join(quote(t) for t in kept)} FROM {role}")
                for table in kept:
                    rights = audit_table_privileges(table)
                    cursor.execute(f"GRANT {rights} ON {quote(table)} TO {role}")
            # The sequences behind the tables' identity and serial columns.
            cursor.execute(
                "SELECT DISTINCT s.oid::regclass::text FROM pg_class s "
                "JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass "
                "AND d.refclassid = 'pg_class'::regclass "
                "JOIN pg_class t ON t.oid = d.refobjid "
                "JOIN pg_namespace n ON n.oid = t.relnamespace "
                "WHERE s.relkind = 'S' AND t.relname = ANY(%s) "
                "AND n.nspname = ANY(current_schemas(false))",
                [tables],
            )
            sequences = [row[0] for row in cursor.fetchall()]
            if sequences:
                cursor.execute(f"GRANT USAGE, SELECT ON SEQUENCE {', '.join(sequences)} TO {role}")
    if stdout is not None:
        stdout.write(
            f'Database role "{app}" (NOLOGIN, for DATABASE_PRIVILEGED_ROLE=demote): '
            f"{'created; ' if created else ''}granted on {len(tables)} tables.\n"
        )
    return True


def grant_after_migrate(
    sender: Any, *, using: str = "default", plan: Any = None, verbosity: int = 1, **kwargs: Any
) -> None:
    """post_migrate receiver (audit app): `app_role_ensure` after `manage.py migrate` (not
    after `flush`, which sends the signal too)."""
    if plan is None:
        return
    app_role_ensure(using=using, stdout=kwargs.get("stdout") if verbosity >= 1 else None)
