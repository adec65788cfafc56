"""The documented database roles, proven: docs/audit.md's statements run as written (names
and passwords replaced), `migrate` as the owner, then the product serves a chat turn as the
application role; the web server, the worker and beat refuse to start as a superuser or as
the owner, naming the documented setup; and the application role cannot TRUNCATE, UPDATE or
DELETE audit rows.

Every piece is a real process against PostgreSQL and Redis (tests/production/processes.py).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.production.processes import (
    BIN,
    ROOT,
    ChatSocket,
    Database,
    Stack,
    base_env,
    own_services,
    sign_in,
    wait_until,
)

pytestmark = [pytest.mark.production, pytest.mark.timeout(240)]

DOCS = ROOT / "docs" / "audit.md"
PASSWORD = "Roles-Test-Passw0rd-2026!"
AUDIT_TABLES = ("audit_auditevent", "audit_auditcheckpoint", "audit_auditanchor")
UPDATED_COLUMN = {
    "audit_auditevent": "action",
    "audit_auditcheckpoint": "signature",
    "audit_auditanchor": "key",
}
REFUSAL = re.compile(r'Refusing to start .*docs/audit\.md, "Database roles".*DATABASE_PRIVILEGED')


def documented_statements() -> list[list[str]]:
    """The SQL blocks of docs/audit.md's "Database roles" section, each as its statements."""
    section = DOCS.read_text().split("## Database roles\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.S)
    assert len(blocks) == 3, "docs/audit.md: expected the three blocks of the role setup"
    out = []
    for block in blocks:
        text = "\n".join(line for line in block.splitlines() if not line.startswith("--"))
        out.append([part.strip() for part in text.split(";") if part.strip()])
    return out


class Roles:
    """docs/audit.md's roles and database, under names of this test's own."""

    def __init__(self, server: Database) -> None:
        suffix = secrets.token_hex(3)
        self.server = server
        self.owner = f"eai_roles_owner_{suffix}"
        self.app = f"eai_roles_app_{suffix}"
        self.database = f"eai_roles_{suffix}"

    def adapt(self, statement: str) -> str:
        statement = statement.replace("enterprise_ai_owner", self.owner)
        statement = statement.replace("enterprise_ai_app", self.app)
        return re.sub(r"\benterprise_ai\b", self.database, statement)

    def password(self, role: str) -> str:
        return {self.owner: "owner-password", self.app: "app-password"}.get(role, "")

    def url(self, role: str) -> str:
        """postgres:// for `role` (the superuser's own credentials for it)."""
        server = self.server
        secret = server.password if role == server.user else self.password(role)
        auth = f"{role}:{secret}" if secret else role
        return f"postgres://{auth}@{server.host}:{server.port}/{self.database}"

    def connect(self, role: str, dbname: str | None = None) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.server.host,
            port=self.server.port,
            user=role,
            password=(self.server.password if role == self.server.user else self.password(role))
            or None,
            dbname=dbname or self.database,
            autocommit=True,
            connect_timeout=5,
        )

    def run_as(self, role: str, statements: list[str], dbname: str | None = None) -> None:
        with self.connect(role, dbname) as conn:
            for statement in statements:
                conn.execute(self.adapt(statement).encode())

    def drop(self) -> None:
        with self.connect(self.server.user, "postgres") as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.database)
                )
            )
            for role in (self.app, self.owner):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Roles, Stack]]:
    # own_services: a Redis database of this test's own (and the server to create roles on).
    with own_services("eai_roles_probe") as (server, redis):
        roles = Roles(server)
        create, before_migrate, after_migrate = documented_statements()
        try:
            roles.run_as(server.user, create, dbname="postgres")  # as the superuser
            roles.run_as(roles.owner, before_migrate)
            env = base_env(
                database_url=roles.url(roles.app),
                redis_url=redis.url,
                key_prefix=f"eai-roles-{secrets.token_hex(2)}",
                data_dir=tmp_path / "data",
                DATABASE_PRIVILEGED_ROLE="refuse",
                # A role of this test's own, which a migrate as the owner must not create.
                DATABASE_APP_ROLE=f"{roles.app}_demoted",
            )
            with Stack(tmp_path / "stack", env) as stack:
                migrated = stack.manage(
                    "migrate", "--noinput", extra_env={"DATABASE_URL": roles.url(roles.owner)}
                )
                # The owner may not create roles: migrate creates none, grants none, says nothing.
                assert "Database role" not in migrated, migrated[-2000:]
                with roles.connect(roles.server.user, "postgres") as admin:
                    found = admin.execute(
                        "SELECT count(*) FROM pg_roles WHERE rolname = %s",
                        (f"{roles.app}_demoted",),
                    ).fetchall()
                assert found == [(0,)]
                roles.run_as(roles.owner, after_migrate)
                yield roles, stack
        finally:
            roles.drop()


def refused(stack: Stack, argv: list[str], url: str) -> str:
    """Run a serving process as the role of `url`; its output, asserting it refused to start."""
    import subprocess

    result = subprocess.run(
        argv,
        cwd=ROOT,
        env={**stack.env, "DATABASE_URL": url},  # DATABASE_PRIVILEGED_ROLE=refuse
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert REFUSAL.search(output), output[-2000:]
    return output


SERVE = [str(BIN / "python"), "manage.py", "serve", "--host", "127.0.0.1", "--port", "1"]
WORKER = [str(BIN / "celery"), "-A", "enterprise_ai", "worker", "--pool", "threads"]


def test_the_documented_roles_serve_as_the_app_and_refuse_the_owner_and_a_superuser(
    site: tuple[Roles, Stack], tmp_path: Path
) -> None:
    roles, stack = site
    beat = [str(BIN / "celery"), "-A", "enterprise_ai", "beat", "--schedule", str(tmp_path / "s")]

    # As the application role: the web server, a worker and beat start, and a chat turn works.
    stack.manage(
        "shell",
        "-c",
        "from accounts.models import User; User.objects.create_user("
        f"username='roles', email='roles@example.com', password={PASSWORD!r})",
    )
    web = stack.start_web()
    worker = stack.start_worker(concurrency=2, wait=False)
    stack.start_beat()
    stack.wait_ready(worker)

    async def chat_turn() -> list[dict[str, Any]]:
        cookie = sign_in(web.base_url, "roles", PASSWORD)
        async with await ChatSocket.connect(web.base_url, cookie) as chat:
            await chat.send({"type": "send", "conversation": None, "text": "Hi", "model": "demo"})
            accepted = await chat.until(lambda f: f["type"] in {"accepted", "error"}, timeout=20)
            assert accepted[-1]["type"] == "accepted", accepted[-1]
            reply = accepted[-1]["message"]
            return await chat.until(
                lambda f: f.get("message") == reply and f["type"] in {"done", "error"}, timeout=60
            )

    frames = asyncio.run(chat_turn())
    assert frames[-1]["type"] == "done", frames[-1]

    def chained_actions() -> bool:
        # The web and worker processes chain their events on a thread just after each commit.
        with roles.connect(roles.owner) as conn:
            actions = {row[0] for row in conn.execute("SELECT action FROM audit_auditevent")}
        return {"auth.login", "message.sent", "reply.completed"} <= actions

    wait_until(chained_actions, timeout=20, what="the turn's audit events in the chain")

    # As the owner, and as a superuser: each serving process refuses, saying why and where.
    for role, why in (
        (roles.owner, "owns audit_auditanchor, audit_auditcheckpoint, audit_auditevent"),
        (roles.server.user, "is a superuser"),
    ):
        for argv in (SERVE, WORKER, beat):
            output = refused(stack, argv, roles.url(role))
            assert f'the database role "{role}" {why}' in output, output[-2000:]

    # The development escape hatch: allowed explicitly, the owner starts (with a warning),
    # also through the older DATABASE_ALLOW_PRIVILEGED_ROLE=true.
    for allowed in (
        {"DATABASE_PRIVILEGED_ROLE": "allow"},
        {"DATABASE_PRIVILEGED_ROLE": "", "DATABASE_ALLOW_PRIVILEGED_ROLE": "true"},
    ):
        web = stack.start_web(
            "web-as-owner", extra_env={"DATABASE_URL": roles.url(roles.owner), **allowed}
        )
        web.wait_for_log(r"DATABASE_PRIVILEGED_ROLE=allow \(development only\)", timeout=10)
        web.stop()


def test_the_app_role_cannot_truncate_update_or_delete_audit_rows(
    site: tuple[Roles, Stack],
) -> None:
    roles, stack = site
    # A row in each table to refuse to touch: a checkpoint over one event, anchored.
    stack.manage(
        "shell",
        "-c",
        "from audit.services import audit_record, checkpoint_create; "
        "from audit.models import AuditAnchor; from django.utils import timezone; "
        "audit_record(action='auth.logout', actor=None); c = checkpoint_create(); "
        "AuditAnchor.objects.create(checkpoint=c, anchored_at=timezone.now(), bucket='b', "
        "key='k', version_id='v', retain_until=timezone.now())",
        extra_env={"AUDIT_ANCHOR_S3_BUCKET": ""},
    )
    with roles.connect(roles.app) as conn:
        for table in AUDIT_TABLES:
            count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            assert conn.execute(count).fetchall() != [(0,)], f"{table} is empty"
        for table in AUDIT_TABLES:
            name, column = sql.Identifier(table), sql.Identifier(UPDATED_COLUMN[table])
            for statement in (
                sql.SQL("TRUNCATE {}").format(name),
                sql.SQL("TRUNCATE {} CASCADE").format(name),
                sql.SQL("UPDATE {} SET {} = ''").format(name, column),
                sql.SQL("DELETE FROM {}").format(name),
                sql.SQL("ALTER TABLE {} DISABLE TRIGGER ALL").format(name),
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        privileges = conn.execute(
            "SELECT t, has_table_privilege(t, 'TRUNCATE'), has_table_privilege(t, 'UPDATE'), "
            "has_table_privilege(t, 'DELETE'), has_table_privilege(t, 'INSERT') "
            "FROM unnest(%s::text[]) AS t",
            (list(AUDIT_TABLES),),
        ).fetchall()
    assert privileges == [(t, False, False, False, True) for t in AUDIT_TABLES]
