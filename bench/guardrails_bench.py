"""Guardrail benchmark: what screening adds to a chat turn, and its worst case.

Pure computation, no database or service: the detectors (guardrails/dlp.py) and the
injection scorer (guardrails/injection.py) run on every message before it is stored, and the
reply guard redacts every message of a provider request and screens every tool result. What
it measures, each over many repetitions (p50, p95, max in milliseconds):

1. **Screening one message** (`message_screen`'s work: every detector, then the injection
   score) for ordinary business text of 200 characters, 2,000 characters and 16,000
   characters (`CHAT_MAX_MESSAGE_CHARS`), each with a few personal-data values in it.
2. **Hostile input** of the maximum size built to make regexes work hard: digit runs with
   separators (cards, phones, IBANs), `@` runs (e-mail), long base64-like runs, spaced-out
   letters, invisible characters, nested comment markers.
3. **Redacting a provider request** in redact mode: a 40-message history (the default
   `CHAT_HISTORY_MAX_MESSAGES`) of about 1,000 characters each, with values repeated across
   messages, through `ReplyGuard` (seed, then every message).
4. **Screening a tool result** of 8,000 characters (the registry's cap): score, redact, wrap
   (one without findings: a finding is written to the audit trail, a database write).

It is a benchmark, not a test: nothing asserts on timings. Results are written to
`bench/results/guardrails.json` and `bench/results/guardrails.md`.

Run it with `make bench`, or directly:

    .venv/bin/python -m bench.guardrails_bench             # about half a minute
    .venv/bin/python -m bench.guardrails_bench --repeat 50  # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.audit_bench import (
    code_line,
    configure_environment,
    git_state,
    log,
    machine_facts,
    percentile,
    setup_django,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BENCH_ENV = {"DJANGO_SETTINGS_MODULE": "enterprise_ai.settings", "LOG_LEVEL": "WARNING"}
# The embedded settings: nothing here touches a database, a cache or a channel layer.
UNSET_ENV = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "AUDIT_ANCHOR_S3_BUCKET")

SENTENCES = [
    "Please summarise the quarterly figures for the steering committee by Friday.",
    "The supplier asked whether the delivery dates in the contract can move by a week.",
    "Our travel policy says economy class for flights under six hours.",
    "Can you draft a polite reminder about the overdue invoice?",
    "The team met on Tuesday to review the onboarding checklist and the open risks.",
    "Customer churn rose from 3% to 4.5% in the second quarter, mostly in the north region.",
    "Send the agenda to the project sponsors and book the large meeting room.",
]
VALUES = [
    "anna.meyer@example.com",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "AKIAIOSFODNN7EXAMPLE",
]


def business_text(chars: int, rng: random.Random, values: int = 3) -> str:
    """Ordinary prose of about `chars` characters with `values` personal-data values in it."""
    parts: list[str] = []
    size = 0
    while size < chars:
        sentence = rng.choice(SENTENCES)
        parts.append(sentence)
        size += len(sentence) + 1
    for index in range(values):
        parts.insert(rng.randrange(len(parts)), f"Contact: {VALUES[index % len(VALUES)]}.")
    return " ".join(parts)[: max(chars, 1)]


def hostile_text(chars: int) -> str:
    """Text shaped to make the detectors and the scorer work as hard as possible."""
    pieces = [
        "1 2-3 4-5 6 7 8 9 0 " * 20,
        "@" * 200 + "a.b@" * 50,
        "QUJD" * 300,
        "i g n o r e " * 40,
        "\u200b" * 100,
        "<!-- " * 100,
        "DE00 " * 100,
        "+1 (" * 100,
        "ignore previous " * 50,
    ]
    text = ""
    while len(text) < chars:
        text += "".join(pieces)
    return text[:chars]


def timed(function: Callable[[], Any], repeat: int) -> dict[str, float]:
    function()  # warm up: compiled patterns, caches
    samples: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(percentile(samples, 50), 3),
        "p95_ms": round(percentile(samples, 95), 3),
        "max_ms": round(max(samples), 3),
        "repeat": repeat,
    }


def run(repeat: int) -> dict[str, Any]:
    from guardrails import dlp, injection
    from guardrails.models import GuardrailPolicy
    from guardrails.services import ReplyGuard
    from providers.base import ChatMessage, ToolResult

    rng = random.Random(6)  # noqa: S311 - the same made-up texts on every run, not a secret
    policy = GuardrailPolicy(dlp_mode="redact")  # never saved: no database needed

    def screen(text: str) -> Callable[[], Any]:
        def work() -> Any:
            findings = dlp.scan(text, policy.detectors, policy.national_ids)
            return dlp.counts(findings), injection.score(text)

        return work

    results: dict[str, Any] = {"screen_message": []}
    for chars in (200, 2_000, 16_000):
        text = business_text(chars, rng)
        log(f"screening a {chars:,}-character message")
        results["screen_message"].append(
            {"chars": len(text), "kind": "business", **timed(screen(text), repeat)}
        )
    hostile = hostile_text(16_000)
    log("screening a 16,000-character hostile message")
    results["screen_message"].append(
        {"chars": len(hostile), "kind": "hostile", **timed(screen(hostile), max(10, repeat // 5))}
    )

    history = [
        ChatMessage("user" if n % 2 == 0 else "assistant", business_text(1_000, rng, values=1))
        for n in range(40)
    ]

    class Reply:  # what ReplyGuard reads of a reply: nothing here is stored
        conversation = None
        public_id = "bench"

    def redact_request() -> Any:
        guard = ReplyGuard(policy=policy, owner=None, reply=Reply())
        guard.seed([m.content for m in history])
        return guard.messages(history)

    log("redacting a 40-message request")
    results["redact_request"] = {
        "messages": len(history),
        "chars": sum(len(m.content) for m in history),
        **timed(redact_request, max(10, repeat // 5)),
    }

    # No findings: a finding is recorded in the audit trail, which needs a database.
    tool_text = business_text(8_000, rng, values=0)
    quiet_policy = GuardrailPolicy(dlp_mode="redact", injection_mode_tools="flag")

    def screen_tool_result() -> Any:
        guard = ReplyGuard(policy=quiet_policy, owner=None, reply=Reply())
        return guard.tool_result(ToolResult("call-1", "search_internet", tool_text))

    log("screening an 8,000-character tool result")
    results["tool_result"] = {"chars": len(tool_text), **timed(screen_tool_result, repeat)}
    return results


def render_markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "# Guardrail benchmark",
        "",
        f"Measured {machine['date']} on {machine['cpu_count']} × {machine['cpu_model'] or 'CPU'}"
        f", Python {machine['python']}, load average at start "
        f"{machine['load_average_at_start']}. {code_line(results)}",
        "",
        "## Screening one message (every detector, then the injection score)",
        "",
        "| message | characters | p50 ms | p95 ms | max ms | runs |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["screen_message"]:
        lines.append(
            f"| {row['kind']} | {row['chars']:,} | {row['p50_ms']} | {row['p95_ms']} | "
            f"{row['max_ms']} | {row['repeat']} |"
        )
    redact = results["redact_request"]
    tool = results["tool_result"]
    lines += [
        "",
        "## Reply guard (redact mode)",
        "",
        "| work | size | p50 ms | p95 ms | max ms | runs |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        f"| redact a request (seed + every message) | {redact['messages']} messages, "
        f"{redact['chars']:,} characters | {redact['p50_ms']} | {redact['p95_ms']} | "
        f"{redact['max_ms']} | {redact['repeat']} |",
        f"| screen, scan and wrap a tool result (no findings) | {tool['chars']:,} characters | "
        f"{tool['p50_ms']} | {tool['p95_ms']} | {tool['max_ms']} | {tool['repeat']} |",
        "",
        "Nothing here touches the database; a turn's database and provider time comes on top.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument(
        "--repeat",
        type=int,
        default=int(os.environ.get("BENCH_GUARDRAILS_REPEAT", "500")),
        help="runs per measurement (default: BENCH_GUARDRAILS_REPEAT or 500)",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.repeat < 10:
        parser.error("use at least 10 runs")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_environment(BENCH_ENV, UNSET_ENV)
    setup_django(BENCH_ENV, UNSET_ENV)
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine_facts(), "git": git_state()}
    results.update(run(args.repeat))
    results["total_seconds"] = round(time.monotonic() - started, 1)
    results["git_at_end"] = git_state()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "guardrails.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    markdown = render_markdown(results)
    (args.output_dir / "guardrails.md").write_text(markdown, "utf-8")
    print()
    print(markdown)
    log(f"results written to {args.output_dir}/guardrails.json and guardrails.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
