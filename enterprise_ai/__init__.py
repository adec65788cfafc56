"""Enterprise AI project package: settings, URLs, ASGI and Celery applications."""

from enterprise_ai.celery import app as celery_app

__all__ = ("celery_app",)
