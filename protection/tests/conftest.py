"""Fixtures of encryption at rest: local master keys and moto's KMS server on loopback."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from conversations.generation import reply_generate
from conversations.services import message_send
from protection import keyring
from protection.keyfile import generate_master_key


@pytest.fixture
def kms(moto_endpoint: str, aws_env: None, settings: Any) -> Any:
    """A real boto3 KMS client on moto's server (the root conftest's `moto_endpoint`); the
    settings point at the server, no key yet."""
    settings.ENCRYPTION_KMS_ENDPOINT_URL = moto_endpoint
    settings.ENCRYPTION_KMS_REGION = "eu-west-1"
    return boto3.client("kms", endpoint_url=moto_endpoint, region_name="eu-west-1")


@pytest.fixture
def kms_key(kms: Any, settings: Any) -> str:
    """A new symmetric KMS key, configured as the current master key; yields its ARN."""
    arn = str(kms.create_key(Description="enterprise-ai test")["KeyMetadata"]["Arn"])
    settings.ENCRYPTION_KMS_KEY_ID = arn
    return arn


@pytest.fixture
def local_master(settings: Any) -> str:
    """A fresh local master key as the current one (no KMS, no previous keys)."""
    written = generate_master_key()
    settings.ENCRYPTION_KMS_KEY_ID = ""
    settings.ENCRYPTION_MASTER_KEY = written
    settings.ENCRYPTION_PREVIOUS_MASTER_KEYS = []
    settings.ENCRYPTION_MASTER_KEY_LOCAL_FILE = ""
    keyring.clear_cache()
    return written


@pytest.fixture
def turn(fast_demo: None, monkeypatch: pytest.MonkeyPatch, owner: Any) -> Any:
    """Send a message through the product's send path and generate its demo reply."""

    def send(text: str) -> Any:
        monkeypatch.setattr("conversations.services.dispatch", lambda *a: None)
        result = message_send(actor=owner, text=text, model_key="demo")
        reply_generate(reply_id=result.reply.pk)
        result.reply.refresh_from_db()
        return result

    return send
