"""manage.py serve — the web server (daphne), plus the in-process scheduler when embedded,
and the sweeper of stuck replies always.

`make run` uses it. On the production path it only serves; Celery beat runs the schedule.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import first_run
from conversations import inflight
from enterprise_ai import daphne_server, db_role, scheduler

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Serve the ASGI application with daphne (and run periodic tasks when embedded)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", default="8000")

    def handle(self, *args: Any, host: str, port: str, **options: Any) -> None:
        # Never as a role that could rewrite the audit trail (PostgreSQL; docs/audit.md).
        try:
            db_role.role_check(process="the web server")
        except db_role.PrivilegedRoleError as exc:
            raise CommandError(str(exc)) from None
        # Every web process fails replies whose worker died (conversations/inflight.py).
        inflight.start_sweeping()
        if settings.TASK_DISPATCH == "thread":
            scheduler.start()
            self.stdout.write(
                "Periodic tasks run in this process: audit checkpoints every "
                f"{settings.AUDIT_CHECKPOINT_INTERVAL_SECONDS}s, audit verification "
                f"(incremental) every {settings.AUDIT_VERIFY_INTERVAL_SECONDS}s and in full "
                f"every {settings.AUDIT_VERIFY_FULL_INTERVAL_SECONDS}s, retention every "
                f"{settings.RETENTION_INTERVAL_SECONDS}s."
            )
        # daphne refuses client frames and messages over the chat's limit from their headers,
        # before buffering them, and writes its access log through logging (masked, JSON in
        # production) instead of to stdout (enterprise_ai/daphne_server.py).
        cli, limits = daphne_server.command_line_interface(
            daphne_server.incoming_limit(), on_listening=partial(self.announce, host, port)
        )
        cli.run(["-b", host, "-p", str(port), *limits, "enterprise_ai.asgi:application"])

    def announce(self, host: str, port: str) -> None:
        """The last lines on the terminal, once the server listens: where to open it, and
        the first-run administrator's generated password while it is unchanged (make run)."""
        url = f"http://{host}:{port}/"
        if settings.LOG_FORMAT == "json":
            # The production path: every line on stdout is a JSON log record (docs/operations.md).
            logger.info("serving on %s", url)
            return
        credentials = first_run.credentials_pending()
        if credentials is None:
            self.stdout.write(f"Serving on {url}  (Ctrl+C to stop)")
        else:
            self.stdout.write(first_run.credentials_box(credentials, url=url), ending="")
            self.stdout.write("(Ctrl+C to stop)")
        self.stdout.flush()
