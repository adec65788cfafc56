"""One face for every provider's loopback double, so the same scenarios run against each.

`Service` starts the double, points the settings at it, creates a catalogue model served by
it, and knows how to inject the common faults and what reply to expect.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

import providers.bedrock
from providers.models import AIModel
from providers.testing import bedrock_server as bd
from providers.testing import openai_server as od

PROVIDER_KINDS = ["bedrock", "openai", "openai-server", "azure-openai", "openai-compatible"]


@dataclass
class Service:
    kind: str
    model: AIModel
    expected_reply: Callable[[str], str]
    model_requests: Callable[[], list[Any]]
    _inject: Callable[[str, dict[str, Any]], None]
    _script_tool: Callable[[str, dict[str, Any]], None]
    double: Any = field(repr=False, default=None)

    def fail(self, fault: str, **options: Any) -> None:
        """Queue a fault for the next model request: unavailable, server_error,
        rate_limited (retry_after=seconds), drop (after some text), stall (seconds)."""
        self._inject(fault, options)

    def script_tool(self, name: str, arguments: dict[str, Any]) -> None:
        self._script_tool(name, arguments)


def _bedrock_fault(fault: str, options: dict[str, Any]) -> bd.Fault:
    kinds = {
        "unavailable": bd.FaultKind.UNAVAILABLE,
        "server_error": bd.FaultKind.INTERNAL_ERROR,
        "rate_limited": bd.FaultKind.THROTTLED,
        "drop": bd.FaultKind.DROP,
        "stall": bd.FaultKind.STALL,
    }
    return bd.Fault(
        kinds[fault],
        retry_after=str(options.get("retry_after", "1")),
        after_events=4 if fault == "drop" else 1,
        stall_seconds=float(options.get("seconds", 2.0)),
    )


def _openai_fault(double: od.OpenAIDouble, fault: str, options: dict[str, Any]) -> None:
    if fault == "rate_limited":
        double.inject(od.Fault.RATE_LIMITED, retry_after=str(options.get("retry_after", "1")))
    elif fault == "unavailable":
        double.inject(od.Fault.UNAVAILABLE)
    elif fault == "server_error":
        double.inject(od.Fault.SERVER_ERROR)
    elif fault == "drop":
        double.inject(od.Fault.DROP_CONNECTION, after_deltas=3)
    elif fault == "stall":
        double.inject(od.Fault.STALL, stall_seconds=float(options.get("seconds", 2.0)))
    else:  # pragma: no cover - a typo in a test
        raise ValueError(fault)


@contextmanager
def running_service(
    kind: str, settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> Iterator[Service]:
    """Start the double for `kind` and a catalogue model `kind` served by it."""
    if kind == "bedrock":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDINTEGRATION")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "integration-secret")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_MAX_ATTEMPTS"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(providers.bedrock, "_sessions", threading.local())
        with bd.BedrockServer(reply_words=12) as server:
            settings.BEDROCK_REGION = "us-east-1"
            settings.BEDROCK_ENDPOINT_URL = server.url
            model = AIModel.objects.create(
                key=kind, display_name="Bedrock model", provider="bedrock",
                provider_model_id="anthropic.claude-test-v1:0", available_to_everyone=True,
            )  # fmt: skip

            def script(name: str, arguments: dict[str, Any]) -> None:
                server.tool_script = bd.ToolScript(
                    name=name, input=arguments, text_before="Searching. "
                )

            yield Service(
                kind,
                model,
                expected_reply=lambda prompt: bd.expected_reply(prompt, 12),
                model_requests=lambda: [
                    r for r in server.requests if r.operation == "ConverseStream"
                ],
                _inject=lambda fault, options: server.inject(_bedrock_fault(fault, options)),
                _script_tool=script,
                double=server,
            )
        return

    with od.OpenAIDouble(reply_words=24) as double:
        provider = {"openai-server": "openai"}.get(kind, kind)
        options: dict[str, Any] = {}
        if kind == "openai":
            options = {"context": "stateless"}
        elif kind == "openai-server":
            options = {"context": "server"}
        settings.OPENAI_API_KEY = "sk-integration"
        settings.OPENAI_BASE_URL = double.base_url
        settings.AZURE_OPENAI_ENDPOINT = double.azure_endpoint
        settings.AZURE_OPENAI_API_KEY = "azure-integration"
        settings.OPENAI_COMPATIBLE_BASE_URL = double.base_url
        model = AIModel.objects.create(
            key=kind, display_name=f"{kind} model", provider=provider,
            provider_model_id="gpt-test", options=options, available_to_everyone=True,
        )  # fmt: skip
        yield Service(
            kind,
            model,
            expected_reply=lambda prompt: od.reply_for(prompt, 24),
            model_requests=double.model_requests,
            _inject=lambda fault, options: _openai_fault(double, fault, options),
            _script_tool=lambda name, arguments: double.script_tool_call(
                name, arguments, text="Searching. "
            ),
            double=double,
        )
