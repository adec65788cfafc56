"""The deferred audit write path on PostgreSQL, with real processes.

Eight processes record events in transactions, some of which roll back; processes are
SIGKILLed between their commit and their chainer, and a chainer is SIGKILLed holding the chain
lock half-way through a batch. Afterwards every committed event is in the chain exactly once,
no rolled-back one is, and the chain is gapless and verifies. The pending table's trigger
refuses UPDATE, TRUNCATE and any DELETE but the chainer's.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction

from audit.models import AuditEvent, PendingAuditEvent
from audit.services import CHAIN_LOCK_KEY, audit_chain_pending
from audit.tasks import audit_chain_pending as sweep_task
from audit.testing import raw_sql
from audit.verify import verify_chain
from tests.production import audit_writers

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]

WRITERS = 8
TRANSACTIONS = 40


@pytest.fixture(autouse=True)
def _no_s3_anchor(settings: Any) -> None:
    settings.AUDIT_ANCHOR_S3_BUCKET = ""


@pytest.fixture
def database_url() -> str:
    """The test database, for processes of their own."""
    params = connection.settings_dict
    return (
        f"postgres://{params['USER']}@{params['HOST'] or '127.0.0.1'}:{params['PORT'] or 5432}"
        f"/{params['NAME']}"
    )


@pytest.fixture
def spawn() -> Iterator[Any]:
    context = multiprocessing.get_context("spawn")
    started: list[Any] = []

    def start(target: Any, *args: Any) -> Any:
        process = context.Process(target=target, args=args)
        process.start()
        started.append(process)
        return process

    start.context = context  # type: ignore[attr-defined]
    yield start
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(timeout=10)


def chained_keys() -> Counter[tuple[Any, ...]]:
    return Counter(
        (d["writer"], d["t"], d["k"])
        for d in AuditEvent.objects.filter(details__has_key="writer").values_list(
            "details", flat=True
        )
    )


def assert_gapless_and_verifies() -> None:
    sequences = list(AuditEvent.objects.order_by("sequence").values_list("sequence", flat=True))
    assert sequences == list(range(1, len(sequences) + 1))
    report = verify_chain()
    assert report.ok, report.summary()
    assert report.events_checked == len(sequences)


def test_eight_writer_processes_with_rollbacks_leave_one_gapless_chain(database_url, spawn) -> None:
    barrier = spawn.context.Barrier(WRITERS)
    results_queue = spawn.context.Queue()
    processes = [
        spawn(audit_writers.write_events, results_queue, database_url, w, TRANSACTIONS, barrier)
        for w in range(WRITERS)
    ]
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + 180
    while len(results) < WRITERS and time.monotonic() < deadline:
        try:
            results.append(results_queue.get(timeout=1))
        except queue_module.Empty:
            if not any(p.is_alive() for p in processes) and results_queue.empty():
                break
    for process in processes:
        process.join(timeout=30)
    assert [r["error"] for r in results if "error" in r] == []
    assert len(results) == WRITERS

    committed = [tuple(key) for r in results for key in r["committed"]]
    rolled_back = {tuple(key) for r in results for key in r["rolled_back"]}
    assert committed and rolled_back
    # Each writer's chainer ran after its commits: nothing is left for the sweep.
    assert not PendingAuditEvent.objects.exists()
    chained = chained_keys()
    assert set(chained) == set(committed)  # every committed event, no rolled-back one
    assert all(count == 1 for count in chained.values())  # each exactly once
    assert not rolled_back & set(chained)
    assert_gapless_and_verifies()


def test_a_writer_killed_between_its_commit_and_its_chainer_loses_nothing(
    database_url, spawn
) -> None:
    process = spawn(audit_writers.commit_then_die, database_url, "killed-writer")
    process.join(timeout=60)
    assert process.exitcode == -signal.SIGKILL
    # Committed with its change, but nobody chained it.
    assert PendingAuditEvent.objects.filter(details__marker="killed-writer").count() == 1
    assert not AuditEvent.objects.filter(details__marker="killed-writer").exists()

    assert sweep_task.apply().get() == 1  # the scheduler's sweep
    assert AuditEvent.objects.filter(details__marker="killed-writer").count() == 1
    assert not PendingAuditEvent.objects.exists()
    assert_gapless_and_verifies()


def _backend_waiting_on_a_lock(application: str) -> int | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query ILIKE %s",
            [f"%{application}%"],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def _backend_count(pid: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def test_a_chainer_killed_holding_the_lock_mid_batch_loses_and_duplicates_nothing(
    database_url, spawn
) -> None:
    for n in range(3):
        process = spawn(audit_writers.commit_then_die, database_url, f"pending-{n}")
        process.join(timeout=60)
    assert PendingAuditEvent.objects.count() == 3

    # Hold the pending rows' row locks so that the chainer, having taken the chain lock and
    # inserted the chained rows, blocks on its DELETE of the pending rows: then kill it.
    params = connection.settings_dict
    with psycopg.connect(
        host=params["HOST"] or "127.0.0.1",
        port=params["PORT"] or 5432,
        user=params["USER"],
        dbname=params["NAME"],
    ) as blocker:
        blocker.execute("SELECT id FROM audit_pendingauditevent FOR UPDATE").fetchall()
        chainer = spawn(audit_writers.chain_pending, database_url)
        deadline = time.monotonic() + 60
        backend = None
        while backend is None and time.monotonic() < deadline:
            backend = _backend_waiting_on_a_lock('DELETE FROM "audit_pendingauditevent"')
            time.sleep(0.05)
        assert backend is not None, "the chainer never reached its DELETE"
        # The chainer holds the chain lock: nobody else can chain meanwhile.
        assert audit_chain_pending() == 0
        chainer.kill()
        chainer.join(timeout=30)
        assert chainer.exitcode == -signal.SIGKILL
        blocker.rollback()
    deadline = time.monotonic() + 60
    while _backend_count(backend) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _backend_count(backend) == 0  # its transaction rolled back, its lock released

    assert not AuditEvent.objects.filter(details__has_key="marker").exists()
    assert audit_chain_pending() == 3
    markers = Counter(
        AuditEvent.objects.filter(details__has_key="marker").values_list(
            "details__marker", flat=True
        )
    )
    assert markers == {f"pending-{n}": 1 for n in range(3)}
    assert not PendingAuditEvent.objects.exists()
    assert_gapless_and_verifies()


# --- The pending table's trigger ---------------------------------------------------------------


def _one_pending_row(database_url: str, spawn: Any) -> int:
    process = spawn(audit_writers.commit_then_die, database_url, "guarded")
    process.join(timeout=60)
    return PendingAuditEvent.objects.get().pk


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_pendingauditevent SET action = 'auth.logout'",
        "DELETE FROM audit_pendingauditevent",
        "TRUNCATE audit_pendingauditevent",
    ],
)
def test_the_trigger_refuses_changes_to_pending_rows(database_url, spawn, statement) -> None:
    pk = _one_pending_row(database_url, spawn)
    with pytest.raises(DatabaseError) as refused:
        raw_sql(statement)
    assert isinstance(refused.value.__cause__, psycopg.errors.InsufficientPrivilege)
    assert "pending audit events are append-only" in str(refused.value)
    assert PendingAuditEvent.objects.get(pk=pk).action == "auth.login"


def test_a_delete_holding_the_chain_lock_is_allowed_and_update_still_is_not(
    database_url, spawn
) -> None:
    _one_pending_row(database_url, spawn)
    with pytest.raises(DatabaseError), transaction.atomic():
        raw_sql("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])
        raw_sql("UPDATE audit_pendingauditevent SET action = 'auth.logout'")
    with transaction.atomic():
        raw_sql("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])
        raw_sql("DELETE FROM audit_pendingauditevent")
    assert not PendingAuditEvent.objects.exists()
