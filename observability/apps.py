from typing import Any

from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "observability"
    verbose_name = "Observability"

    def ready(self) -> None:
        from celery.signals import worker_process_shutdown, worker_ready

        worker_ready.connect(_serve_worker_metrics, weak=False)
        worker_process_shutdown.connect(_forget_this_process, weak=False)


def _serve_worker_metrics(sender: Any = None, **_: Any) -> None:
    import logging
    import os

    from observability import exporter

    pool = getattr(sender, "pool", None)
    if type(pool).__module__.endswith(".prefork") and not os.environ.get(
        "PROMETHEUS_MULTIPROC_DIR"
    ):
        # The pool processes count the replies; without the shared directory the parent,
        # which serves the exporter, would report none of it.
        logging.getLogger(__name__).warning(
            "the prefork pool needs PROMETHEUS_MULTIPROC_DIR for its metrics to be reported"
        )
    exporter.start_from_settings()


def _forget_this_process(**_: Any) -> None:
    """A pool process exiting cleanly takes its live gauges with it (multiprocess mode)."""
    import os

    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())
