"""Encryption-at-rest benchmark: what sealing and opening add to one chat reply.

No database or service: the data key is the month's key already unwrapped (the steady state:
each process unwraps a data key once, then serves it from memory), so what is measured is the
work every reply does through the encrypted fields (protection/fields.py): JSON encoding,
AES-256-GCM and base64 for

- **write**: the user's message (300 characters), the reply (2,000 characters), its tool calls
  and results (8,000 characters of JSON) and its options, as stored by one chat turn;
- **read**: the same four values opened again (a page of history, the API's answer).

It is a benchmark, not a test: nothing asserts on timings. Results are written to
`bench/results/encryption.json` and `bench/results/encryption.md`.

    .venv/bin/python -m bench.encryption_bench              # a few seconds
    .venv/bin/python -m bench.encryption_bench --repeat 500
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.audit_bench import code_line, git_state, log, machine_facts, percentile, setup_django

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BENCH_ENV = {"DJANGO_SETTINGS_MODULE": "enterprise_ai.settings", "LOG_LEVEL": "WARNING"}
UNSET_ENV = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "AUDIT_ANCHOR_S3_BUCKET")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5000)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    setup_django(BENCH_ENV, UNSET_ENV)

    from conversations.models import Conversation, Message
    from protection import datakeys

    # The steady state: this month's data key known and unwrapped in this process.
    key = os.urandom(32)
    datakeys._for_writing.ttl_seconds = 3600
    datakeys._by_id.ttl_seconds = 3600
    datakeys._for_writing.put((datakeys.TRANSCRIPTS, datakeys.current_period()), ("dk_bench", key))
    datakeys._by_id.put("dk_bench", key)

    fields: dict[str, tuple[Any, Any]] = {
        "title": (Conversation._meta.get_field("title"), "Quarterly figures for the committee"),
        "content (user)": (Message._meta.get_field("content"), "Please summarise. " * 17),
        "content (reply)": (Message._meta.get_field("content"), "The figures show growth. " * 80),
        "tool_events": (
            Message._meta.get_field("tool_events"),
            [{"id": "t1", "name": "web_search", "arguments": {"q": "x"}, "result": "r" * 8000}],
        ),
        "options": (Message._meta.get_field("options"), {"temperature": 0.3}),
    }
    writes: list[float] = []
    reads: list[float] = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        stored = {name: f.get_prep_value(v) for name, (f, v) in fields.items()}
        sealed = time.perf_counter()
        for name, (f, _value) in fields.items():
            f.from_db_value(stored[name], None, None)
        reads.append((time.perf_counter() - sealed) * 1e6)
        writes.append((sealed - started) * 1e6)

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "p50_us": round(percentile(values, 50), 1),
            "p95_us": round(percentile(values, 95), 1),
            "max_us": round(max(values), 1),
        }

    results: dict[str, Any] = {
        "repeat": args.repeat,
        "write_per_reply": summary(writes),
        "read_per_reply": summary(reads),
        "machine": machine_facts(),
        "git": git_state(),
    }
    results["git_at_end"] = git_state()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "encryption.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    w, r = results["write_per_reply"], results["read_per_reply"]
    markdown = (
        "# Encryption at rest: overhead per chat reply\n\n"
        f"{code_line(results)}\n\n"
        f"{args.repeat} repetitions; one reply = title, user message, reply text, tool calls "
        "and results (8,000 characters), options; the data key already unwrapped.\n\n"
        "| | p50 µs | p95 µs | max µs |\n| --- | --- | --- | --- |\n"
        f"| seal (write) | {w['p50_us']} | {w['p95_us']} | {w['max_us']} |\n"
        f"| open (read) | {r['p50_us']} | {r['p95_us']} | {r['max_us']} |\n"
    )
    (args.output_dir / "encryption.md").write_text(markdown, "utf-8")
    log(f"seal p50 {w['p50_us']} µs, open p50 {r['p50_us']} µs per reply")


if __name__ == "__main__":
    main()
