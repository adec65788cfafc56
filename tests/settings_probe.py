"""Reading the settings in a fresh interpreter with a controlled environment.

Settings are read once per process, so every case that changes the environment runs
`python` anew: the developer's own service configuration (and any `*_FILE` secret) is left
out, `LOCAL_DATA_DIR` points into the test's temporary directory, and the variables given
are set. Nothing starts a service or contacts one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Never inherited from the developer's shell: they choose the configuration's shape.
SERVICE_VARIABLES = frozenset(
    {
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "SECRET_KEY",
        "ALLOWED_HOSTS",
        "DEBUG",
        "AUDIT_HMAC_KEY",
        "ENCRYPTION_MASTER_KEY",
        "ENCRYPTION_KMS_KEY_ID",
        "AUDIT_ANCHOR_S3_BUCKET",
    }
)


def run_python(
    tmp_path: Path, args: list[str], *, unset: Iterable[str] = (), **variables: str
) -> subprocess.CompletedProcess[str]:
    """Run `python <args>` in the project with a controlled environment.

    `unset` names further variables (or prefixes ending in "_") to leave out.
    """
    names = {name for name in unset if not name.endswith("_")}
    prefixes = tuple(name for name in unset if name.endswith("_"))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in SERVICE_VARIABLES
        and key not in names
        and not (prefixes and key.startswith(prefixes))
        and not key.endswith("_FILE")
    }
    env.update(
        LOCAL_DATA_DIR=str(tmp_path / "local"), DJANGO_SETTINGS_MODULE="enterprise_ai.settings"
    )
    env.update(variables)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def settings_values(
    tmp_path: Path, names: Iterable[str], *, unset: Iterable[str] = (), **variables: str
) -> dict[str, Any]:
    """The named settings (Django's defaults included) as JSON values; fails the test if
    the settings do not load."""
    probe = (
        "import json\n"
        "from django.conf import settings\n"
        f"print(json.dumps({{n: getattr(settings, n, None) for n in {sorted(names)!r}}}, "
        "default=str))\n"
    )
    result = run_python(tmp_path, ["-c", probe], unset=unset, **variables)
    assert result.returncode == 0, result.stderr
    values: dict[str, Any] = json.loads(result.stdout)
    return values


def settings_failure(tmp_path: Path, *, unset: Iterable[str] = (), **variables: str) -> str:
    """The last line of the error the settings stop with; fails the test if they load."""
    result = run_python(tmp_path, ["-c", "import enterprise_ai.settings"], unset=unset, **variables)
    assert result.returncode != 0, "the settings loaded"
    return result.stderr.strip().splitlines()[-1]
