"""The outside anchor: checkpoints copied to S3 with Object Lock, and verified against it.

The real boto3 client talks HTTP to moto's S3 server on a loopback port (one server for
the module, a fresh Object Lock bucket for each test); nothing is patched. moto does not
implement GetObjectRetention, so the lock is read back with HeadObject.
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from io import StringIO
from itertools import count
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from django.core.management import call_command

from audit.catalogue import AuditAction
from audit.models import AuditAnchor, AuditCheckpoint, AuditEvent
from audit.services import (
    anchor_key,
    checkpoint_create,
    checkpoint_document,
)
from audit.testing import forge_from, seed_events
from audit.verify import verify_chain

pytestmark = pytest.mark.django_db

RETENTION_DAYS = 30
_buckets = count(1)


@pytest.fixture
def closed_endpoint() -> str:
    """A loopback URL where nothing listens: S3 unreachable."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def s3(moto_endpoint: str, aws_env: None, settings: Any) -> Any:
    """An S3 client on moto's server (the root conftest's `moto_endpoint`) and a new Object
    Lock bucket that the anchor settings point at."""
    bucket = f"audit-anchors-{next(_buckets)}"
    settings.AUDIT_ANCHOR_S3_BUCKET = bucket
    settings.AUDIT_ANCHOR_S3_ENDPOINT_URL = moto_endpoint
    settings.AUDIT_ANCHOR_S3_REGION = "eu-west-1"
    settings.AUDIT_ANCHOR_S3_PREFIX = "audit-checkpoints/"
    settings.AUDIT_ANCHOR_RETENTION_DAYS = RETENTION_DAYS
    settings.AUDIT_ANCHOR_LOCK_MODE = "COMPLIANCE"
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="eu-west-1")
    client.create_bucket(
        Bucket=bucket,
        CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
        ObjectLockEnabledForBucket=True,
    )
    return client


def bucket_keys(s3: Any, bucket: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


# --- Writing the anchor ------------------------------------------------------------------------


def test_a_checkpoint_is_anchored_in_s3_under_compliance_lock(s3, settings) -> None:
    seed_events(3)
    before = datetime.now(UTC)
    checkpoint = checkpoint_create()
    after = datetime.now(UTC)

    anchor = AuditAnchor.objects.get(checkpoint=checkpoint)
    assert anchor.bucket == settings.AUDIT_ANCHOR_S3_BUCKET
    assert anchor.key == anchor_key(checkpoint)
    assert anchor.key.startswith("audit-checkpoints/00000000000000000003-")
    assert anchor.version_id
    assert bucket_keys(s3, anchor.bucket) == [anchor.key]

    stored = s3.get_object(Bucket=anchor.bucket, Key=anchor.key, VersionId=anchor.version_id)
    document = json.loads(stored["Body"].read())
    assert document == checkpoint_document(checkpoint)
    assert document["sequence"] == 3
    assert document["head_hash"] == AuditEvent.objects.get(sequence=3).hash
    assert document["signature"] == checkpoint.signature
    assert stored["ContentType"] == "application/json"

    head = s3.head_object(Bucket=anchor.bucket, Key=anchor.key, VersionId=anchor.version_id)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    retain_until = head["ObjectLockRetainUntilDate"]
    retention = timedelta(days=RETENTION_DAYS)
    assert before + retention - timedelta(seconds=2) <= retain_until <= after + retention
    assert abs(retain_until - anchor.retain_until) < timedelta(seconds=2)


def test_an_anchored_checkpoint_cannot_be_deleted(s3) -> None:
    seed_events(2)
    checkpoint = checkpoint_create()
    anchor = AuditAnchor.objects.get(checkpoint=checkpoint)

    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=anchor.bucket, Key=anchor.key, VersionId=anchor.version_id)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    # COMPLIANCE mode: not even with the governance bypass.
    with pytest.raises(ClientError):
        s3.delete_object(
            Bucket=anchor.bucket,
            Key=anchor.key,
            VersionId=anchor.version_id,
            BypassGovernanceRetention=True,
        )

    stored = s3.get_object(Bucket=anchor.bucket, Key=anchor.key, VersionId=anchor.version_id)
    assert json.loads(stored["Body"].read()) == checkpoint_document(checkpoint)


# --- Verifying against the anchors -------------------------------------------------------------


def test_an_intact_chain_verifies_against_its_anchors(s3) -> None:
    seed_events(5)
    checkpoint_create()
    seed_events(5)
    checkpoint_create()
    assert AuditAnchor.objects.count() == 2

    report = verify_chain(anchors=True)
    assert report.ok, report.summary()
    assert (report.events_checked, report.checkpoints_checked, report.anchors_checked) == (
        10,
        2,
        2,
    )
    assert "2 S3 anchors" in report.summary()
    assert verify_chain().anchors_checked == 0  # S3 is read only when asked for

    out = StringIO()
    call_command("verify_audit_chain", "--anchors", stdout=out, stderr=StringIO())
    assert out.getvalue().startswith("OK") and "2 S3 anchors" in out.getvalue()


def test_a_rewrite_by_the_key_holder_is_caught_only_by_the_anchors(s3) -> None:
    seed_events(5)
    checkpoint_create()
    seed_events(5)
    checkpoint_create()
    original = AuditEvent.objects.get(sequence=7).hash
    forge_from(7, {"n": "forged"}, resign=True)
    assert AuditEvent.objects.get(sequence=7).hash != original

    # The database alone is consistent: hashes chain and every checkpoint signature holds.
    inside = verify_chain()
    assert inside.ok, inside.summary()
    assert inside.checkpoints_checked == 2

    report = verify_chain(anchors=True)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("anchor_mismatch", 10)
    assert "after #5 up to #10" in report.problem.message

    err = StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("verify_audit_chain", "--anchors", stdout=StringIO(), stderr=err)
    assert exit_info.value.code == 1
    assert "sequence #10" in err.getvalue() and "anchor_mismatch" in err.getvalue()


# --- S3 unavailable ----------------------------------------------------------------------------


def test_checkpoints_are_kept_while_s3_is_down_and_anchored_when_it_is_back(
    s3, moto_endpoint, closed_endpoint, settings, caplog
) -> None:
    seed_events(3)
    settings.AUDIT_ANCHOR_S3_ENDPOINT_URL = closed_endpoint
    with caplog.at_level("WARNING", logger="audit.services"):
        first = checkpoint_create()
    assert AuditCheckpoint.objects.filter(pk=first.pk, sequence=3).exists()
    assert not AuditAnchor.objects.exists()
    assert f"audit checkpoint {first.pk} not anchored" in caplog.text
    assert "testing" not in caplog.text  # no credentials in the log
    assert bucket_keys(s3, settings.AUDIT_ANCHOR_S3_BUCKET) == []

    seed_events(2)
    settings.AUDIT_ANCHOR_S3_ENDPOINT_URL = moto_endpoint
    second = checkpoint_create()

    anchors = list(AuditAnchor.objects.order_by("checkpoint_id"))
    assert [a.checkpoint_id for a in anchors] == [first.pk, second.pk]
    assert bucket_keys(s3, settings.AUDIT_ANCHOR_S3_BUCKET) == [
        anchor_key(first),
        anchor_key(second),
    ]
    stored = s3.get_object(Bucket=anchors[0].bucket, Key=anchors[0].key)
    assert json.loads(stored["Body"].read()) == checkpoint_document(first)
    report = verify_chain(anchors=True)
    assert report.ok, report.summary()
    assert report.anchors_checked == 2


def test_verify_with_anchors_exits_two_when_s3_is_unreachable(
    s3, closed_endpoint, settings
) -> None:
    seed_events(3)
    checkpoint_create()
    assert AuditAnchor.objects.count() == 1
    settings.AUDIT_ANCHOR_S3_ENDPOINT_URL = closed_endpoint

    out, err = StringIO(), StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("verify_audit_chain", "--anchors", stdout=out, stderr=err)
    assert exit_info.value.code == 2
    assert "could not be read" in err.getvalue()
    assert out.getvalue() == ""
    # Nothing was verified, so no verification is recorded.
    assert not AuditEvent.objects.filter(action=AuditAction.CHAIN_VERIFIED).exists()
