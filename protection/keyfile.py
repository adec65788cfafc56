"""Local master keys: how a 256-bit key is written in a setting or a file.

A key is 32 random bytes written as base64 (standard or URL-safe, padding optional) or as
64 hexadecimal digits. Pure functions: enterprise_ai/settings.py uses them to fail at
start-up on a bad key, the keyring to read the embedded default's key file.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

KEY_BYTES = 32


def decode_master_key(text: str) -> bytes:
    """The 32 bytes a written key stands for. Raises ValueError (never echoing the key)."""
    value = text.strip()
    if len(value) == 64:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    padded = value + "=" * (-len(value) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64 or hexadecimal") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"decodes to {len(raw)} bytes, not {KEY_BYTES}")
    return raw


def generate_master_key() -> str:
    """A new key, written as URL-safe base64."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def ensure_local_key_file(path: Path) -> bytes:
    """Read the embedded default's master key, creating the file (0600) on first use.

    The file is created exclusively, so two processes starting together agree on one key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(generate_master_key() + "\n")
    return decode_master_key(path.read_text(encoding="utf-8"))
