"""The Celery application of the production path (`make worker`).

Configuration comes from Django settings prefixed with CELERY_. Reply generation is routed
to the dedicated `llm` queue so that slow model calls never hold up other work.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "enterprise_ai.settings")

app = Celery("enterprise_ai")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
