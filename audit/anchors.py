"""The outside anchor: checkpoints copied to an S3 bucket with Object Lock.

Object Lock in COMPLIANCE mode means nobody, the bucket owner and AWS root included, can
delete or overwrite an anchored checkpoint before its retention date. Someone who rewrites
the database and holds the HMAC key still cannot rewrite these copies; `verify_audit_chain
--anchors` compares the chain against them. The bucket must be created with Object Lock
enabled (docs/audit.md). Credentials come only from the standard AWS chain.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings


class AnchorError(Exception):
    """S3 refused or could not be reached. The message is safe to log."""


def _client() -> Any:
    return boto3.client(
        "s3",
        region_name=settings.AUDIT_ANCHOR_S3_REGION or None,
        endpoint_url=settings.AUDIT_ANCHOR_S3_ENDPOINT_URL or None,
        config=Config(
            connect_timeout=5, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"}
        ),
    )


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"S3 error {error.get('Code', 'unknown')}"
    return type(exc).__name__


def put_checkpoint(*, key: str, document: dict[str, Any], retain_until: datetime) -> str:
    """Write one checkpoint, locked until `retain_until`. Returns the object's version id."""
    body = json.dumps(document, sort_keys=True).encode("utf-8")
    try:
        response = _client().put_object(
            Bucket=settings.AUDIT_ANCHOR_S3_BUCKET,
            Key=key,
            Body=body,
            ContentType="application/json",
            ObjectLockMode=settings.AUDIT_ANCHOR_LOCK_MODE,
            ObjectLockRetainUntilDate=retain_until,
            ChecksumAlgorithm="SHA256",
        )
    except (BotoCoreError, ClientError) as exc:
        raise AnchorError(_describe(exc)) from None
    return str(response.get("VersionId") or "")


def iter_checkpoints() -> Iterator[dict[str, Any]]:
    """Every anchored checkpoint in the bucket, in chain order, one page at a time."""
    client = _client()
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(
            Bucket=settings.AUDIT_ANCHOR_S3_BUCKET, Prefix=settings.AUDIT_ANCHOR_S3_PREFIX
        ):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=settings.AUDIT_ANCHOR_S3_BUCKET, Key=item["Key"])
                try:
                    document = json.loads(body["Body"].read())
                except ValueError:
                    document = {"unreadable": True}
                yield {"key": item["Key"], **document}
    except (BotoCoreError, ClientError) as exc:
        raise AnchorError(_describe(exc)) from None
