"""`manage.py api_key_create --user USERNAME --name NAME [--scopes chat,models:read]
[--expires 2027-01-31|30d] [--rate-limit 60] [--budget 25.00 [--budget-period monthly]]`:
create an API key for automation.

The key is printed alone on the last line, so a script can take `tail -n 1`. Audited as a
system event (no actor) with details {"via": "command"}.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.api_keys import SCOPES, api_key_create
from accounts.forms import expiry_parse
from accounts.models import User
from costs.models import Budget


class Command(BaseCommand):
    help = "Create an API key for a person or service account; prints the key on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="The owner's username.")
        parser.add_argument("--name", required=True, help="What the key is for.")
        parser.add_argument(
            "--scopes",
            default="chat",
            help=f"Comma-separated, from: {', '.join(SCOPES)} (default: chat).",
        )
        parser.add_argument(
            "--expires", default="", help="A date (2027-01-31) or days from now (30d)."
        )
        parser.add_argument(
            "--rate-limit",
            type=int,
            default=None,
            help="Requests per minute for this key (default: API_KEY_REQUESTS_PER_MINUTE).",
        )
        parser.add_argument(
            "--budget",
            default=None,
            help="A spend limit of the key's own per period, in the ledger's currency.",
        )
        parser.add_argument(
            "--budget-period",
            default=Budget.Period.MONTHLY,
            choices=Budget.Period.values,
            help="The key's budget period (default: monthly).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        owner = User.objects.filter(username=options["user"]).first()
        if owner is None:
            raise CommandError(f"No user named {options['user']!r}.")
        scopes = [scope.strip() for scope in options["scopes"].split(",") if scope.strip()]
        try:
            expires_at = expiry_parse(options["expires"])
        except ValueError as error:
            raise CommandError(str(error)) from None
        budget = None
        if options["budget"] is not None:
            try:
                budget = Decimal(options["budget"])
            except InvalidOperation:
                raise CommandError(f"{options['budget']!r} is not an amount.") from None
        if options["rate_limit"] is not None and options["rate_limit"] < 1:
            raise CommandError("--rate-limit must be at least 1.")
        try:
            key, raw = api_key_create(
                owner=owner,
                name=options["name"],
                scopes=scopes,
                expires_at=expires_at,
                actor=None,
                rate_limit_per_minute=options["rate_limit"],
                budget_limit=budget,
                budget_period=options["budget_period"],
                via="command",
            )
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        expiry = f"expires {key.expires_at.isoformat()}" if key.expires_at else "does not expire"
        self.stdout.write(
            f"Created API key {key.prefix} ({key.name}) for {owner.username}, scopes "
            f"{' '.join(key.scopes)}, {expiry}. It is not shown again:"
        )
        self.stdout.write(raw)
