"""`manage.py erase_person PERSON --reason CASE-REF`: erase a person on a
privacy request (accounts/erasure.py).

PERSON is a user name, an e-mail address or a public id. Audited as `person.erased` with no
actor and details {"via": "command"}. Exits non-zero with the refusal's code when a legal
hold applies; running it again for an erased person does nothing and says so.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Q

from accounts.erasure import ErasureRefused, person_erase
from accounts.models import User


def person_find(term: str) -> User:
    """The one account named by a user name, e-mail (any case) or public id."""
    condition = Q(username__iexact=term) | Q(email__iexact=term)
    with contextlib.suppress(ValueError):
        condition |= Q(public_id=uuid.UUID(term))
    found = list(User.objects.filter(condition)[:2])
    if len(found) != 1:
        raise CommandError(
            "not_found: no single account has that user name, e-mail or public id."
            if not found
            else "ambiguous: several accounts match; give the public id."
        )
    return found[0]


class Command(BaseCommand):
    help = "Erase a person's personal data (privacy request); refused under legal hold."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("person", help="User name, e-mail or public id.")
        parser.add_argument(
            "--reason",
            required=True,
            help="The request's case or ticket reference (kept in the audit trail; do not "
            "name the person).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        person = person_find(str(options["person"]).strip())
        try:
            result = person_erase(actor=None, person=person, reason=options["reason"])
        except ErasureRefused as refusal:
            raise CommandError(f"{refusal.code}: {refusal.message}") from None
        self.stdout.write(result.message)
