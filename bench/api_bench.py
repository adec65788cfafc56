"""API benchmark, side by side: a loopback OpenAI-compatible upstream called directly and
through the product's two APIs on the production path, at 1, 10 and 50 concurrent streams.

Everything runs on 127.0.0.1, bounded in count and time, and stops by itself (on failure and
on Ctrl+C too). It reuses the chat benchmark's pieces (bench/chat_bench.py,
bench/chat_support.py):

* **The upstream** — `providers/testing/openai_server.OpenAIDouble` in a process of its own,
  timed as in the chat benchmark: 300 ms to the first token, then 50 tokens/s, replies of 100
  tokens. Each reply depends on the prompt, so every client knows the exact text it must get.
* **The product** — separate processes: daphne (`manage.py serve`), a Celery worker as the
  Makefile's `worker` target starts it (or BENCH_WORKER_POOL / BENCH_WORKER_CONCURRENCY),
  Redis 127.0.0.1:6379 (database 13, key prefix `eai-api-bench`, flushed before and after),
  PostgreSQL 127.0.0.1:5432 (`enterprise_ai_api_bench`, dropped, recreated and migrated every
  run), with audit, a model price, an organisation budget and the ledger. The only model is
  an `openai-compatible` catalogue entry pointing at the upstream. Each stream is a distinct
  person with an API key of their own (scope `chat`), used once, so no per-person limit is
  reached; the per-key limit is switched off (API_KEY_REQUESTS_PER_MINUTE=0).
* **Each level** (N concurrent streams), three measurements, all N calls at once:
  1. direct: the real `openai` SDK (AsyncOpenAI, Chat Completions, streaming) against the
     upstream; then the REST API: `POST /api/v1/chat` with `"stream": true` (Server-Sent
     Events, read with httpx2, the openai SDK's HTTP client);
  2. direct again, then the OpenAI-compatible API: the real `openai` SDK with
     `base_url=<product>/v1`, streaming.
  Time to the first text and to the end of the reply, p50 / p95; overhead = product −
  direct of the round just before it; errors; replies that are incomplete or differ from
  the upstream's text (in the stream, in `done` and in the stored message); CPU seconds and
  peak RSS of web and worker; error lines in their logs.

Target (issue 13): the socket's, overhead p50 ≤ 15 / 40 / 250 ms at 1 / 10 / 50 streams.
Results go to `bench/results/api.json` and `api.md` (`--quick`: `.local/bench-results/`).

    .venv/bin/python -m bench.api_bench            # `make bench`; about three minutes
    .venv/bin/python -m bench.api_bench --quick    # 1/10 streams, one round; about a minute

Exits with status 2 when PostgreSQL or Redis is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import psycopg

from bench import audit_bench, chat_bench
from bench.audit_bench import code_line, git_state, log, machine_facts, postgres_facts
from bench.chat_bench import (
    FIRST_TOKEN_DELAY,
    MODEL_KEY,
    REPLY_TOKENS,
    TARGET_OVERHEAD_MS,
    TOKENS_PER_SECOND,
    Sampler,
    chat_timeout,
    expected_reply,
    log_findings,
    prompt,
    service_env,
    setup_people,
    start_web,
    start_worker,
    stopping,
    words_for,
)
from bench.chat_support import (
    BIN,
    ROOT,
    Service,
    Stopped,
    Store,
    Upstream,
    direct_calls,
    free_port,
    ms_summary,
    on_sigterm,
    p50_p95,
    worker_argv,
    worker_flags,
    write_results,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUICK_DIR = ROOT / ".local" / "bench-results"
DB_NAME = "enterprise_ai_api_bench"
REDIS_DB = 13
REDIS_PREFIX = "eai-api-bench"

PROD_ENV = {
    **{k: v for k, v in chat_bench.PROD_ENV.items() if k != "CHAT_MESSAGES_PER_MINUTE"},
    "DATABASE_URL": (
        f"postgres://{audit_bench.PG_USER}@{audit_bench.PG_HOST}:{audit_bench.PG_PORT}/{DB_NAME}"
    ),
    "REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
    "REDIS_KEY_PREFIX": REDIS_PREFIX,
    # The one setting changed from the defaults: the per-key request limit is off, so that the
    # figures are the governance path's and not a limiter's (every stream has its own key and
    # person anyway, each used once).
    "API_KEY_REQUESTS_PER_MINUTE": "0",
}
PROD_UNSET = chat_bench.PROD_UNSET
PATHS = ("rest", "openai")
PATH_NAMES = {
    "rest": "REST `POST /api/v1/chat` (SSE)",
    "openai": "OpenAI-compatible `/v1` (openai SDK)",
}

# One call as its client saw it: times from the request, the text received, the stored reply's
# id, and what went wrong ("http:<status>:<code>", "error:<code>", an exception's name).
Call = dict[str, Any]


# --- API keys, in a spawned Django process -----------------------------------------------------


def _create_keys(queue: Any, env: dict[str, str], unset: Sequence[str], names: list[str]) -> None:
    """One API key (scope `chat`) per person named, through the product's own service."""
    try:
        audit_bench.setup_django(env, unset)
        from accounts.api_keys import api_key_create
        from accounts.models import User

        owners = {u.username: u for u in User.objects.filter(username__in=names)}
        keys = [
            api_key_create(
                owner=owners[name], name="api bench", scopes=["chat"], actor=None, via="bench"
            )[1]
            for name in names
        ]
        queue.put({"keys": keys})
    except BaseException:
        queue.put({"error": traceback.format_exc()})


def create_keys(env: dict[str, str], names: list[str]) -> list[str]:
    quiet = {**env, "LOG_LEVEL": "WARNING"}
    (result,) = audit_bench.run_processes(_create_keys, [(quiet, PROD_UNSET, names)])
    return list(result["keys"])


# --- Clients -----------------------------------------------------------------------------------


async def _bounded(call: Awaitable[Call], timeout: float) -> Call:
    """A call that may not take longer than `timeout` in all (the SDKs' timeouts are per read)."""
    try:
        return await asyncio.wait_for(call, timeout)
    except TimeoutError:
        return {"error": "timeout", "first_s": None, "text": ""}


async def rest_calls(
    base: str, keys: Sequence[str], prompts: Sequence[str], *, timeout: float
) -> list[Call]:
    """`POST /api/v1/chat` with `"stream": true`, all at once, one key per call; the
    Server-Sent Events read line by line (`delta` {text} …, then `done` or `error`)."""
    import httpx2

    limits = httpx2.Limits(max_connections=len(keys) + 10, max_keepalive_connections=len(keys))
    client = httpx2.AsyncClient(
        base_url=base, timeout=timeout, limits=limits, trust_env=False, follow_redirects=False
    )

    async def one(key: str, text: str) -> Call:
        started = time.perf_counter()
        call: Call = {"first_s": None, "text": ""}
        try:
            async with client.stream(
                "POST",
                "/api/v1/chat",
                json={"message": text, "stream": True},
                headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"},
            ) as response:
                call["headers_s"] = time.perf_counter() - started
                if response.status_code != 200:
                    body = await response.aread()
                    with suppress(ValueError, AttributeError):
                        code = json.loads(body)["error"]["code"]
                        call["error"] = f"http:{response.status_code}:{code}"
                        return call
                    call["error"] = f"http:{response.status_code}"
                    return call
                event = ""
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data = json.loads(line[5:])
                        if event == "delta":
                            if call["first_s"] is None:
                                call["first_s"] = time.perf_counter() - started
                            call["text"] += str(data.get("text", ""))
                        elif event == "done":
                            call["total_s"] = time.perf_counter() - started
                            call["done"] = data
                            call["reply_id"] = data.get("message_id")
                        elif event == "error":
                            call["error"] = f"error:{data.get('code')}"
        except Exception as exc:  # refused, reset, a bad line: recorded, never raised
            call["error"] = type(exc).__name__
        return call

    try:
        return list(
            await asyncio.gather(
                *(_bounded(one(k, p), timeout) for k, p in zip(keys, prompts, strict=True))
            )
        )
    finally:
        await client.aclose()


async def openai_calls(
    base: str, keys: Sequence[str], prompts: Sequence[str], *, timeout: float
) -> list[Call]:
    """The real `openai` SDK with `base_url=<product>/v1`, streaming, all at once, one key
    (one AsyncOpenAI) per call sharing one HTTP connection pool, as the direct calls do."""
    import openai

    http_client = openai.DefaultAsyncHttpxClient(timeout=timeout)

    async def one(key: str, text: str) -> Call:
        client = openai.AsyncOpenAI(
            base_url=base + "/v1",
            api_key=key,
            max_retries=0,  # a refusal is counted, not hidden by a retry
            timeout=timeout,
            http_client=http_client,
        )
        started = time.perf_counter()
        call: Call = {"first_s": None, "text": ""}
        try:
            stream = await client.chat.completions.create(
                model=MODEL_KEY, messages=[{"role": "user", "content": text}], stream=True
            )
            call["headers_s"] = time.perf_counter() - started
            async for chunk in stream:
                call.setdefault("reply_id", chunk.id.removeprefix("chatcmpl-"))
                if chunk.choices:
                    choice = chunk.choices[0]
                    if choice.delta.content:
                        if call["first_s"] is None:
                            call["first_s"] = time.perf_counter() - started
                        call["text"] += choice.delta.content
                    if choice.finish_reason:
                        call["finish_reason"] = choice.finish_reason
            call["total_s"] = time.perf_counter() - started
        except openai.APIStatusError as exc:
            code = (exc.body or {}).get("code") if isinstance(exc.body, dict) else None
            call["error"] = f"http:{exc.status_code}:{code}"
        except Exception as exc:  # recorded, never raised
            call["error"] = type(exc).__name__
        return call

    try:
        return list(
            await asyncio.gather(
                *(_bounded(one(k, p), timeout) for k, p in zip(keys, prompts, strict=True))
            )
        )
    finally:
        await http_client.aclose()


def stored_first_token_s(ids: Sequence[str]) -> dict[str, float]:
    """The worker's own time to the first token of these replies (`time_to_first_token_ms`:
    from the reply's row, written at admission, to the first token from the upstream), by
    reply id (hex, no dashes)."""
    if not ids:
        return {}
    with audit_bench.pg_connect(DB_NAME) as conn:
        rows = conn.execute(
            "SELECT public_id, time_to_first_token_ms FROM conversations_message "
            "WHERE public_id = ANY(%s) AND time_to_first_token_ms IS NOT NULL",
            [[uuid.UUID(i) for i in ids]],
        ).fetchall()
    return {r[0].hex: int(r[1]) / 1000 for r in rows}


# --- Rounds ------------------------------------------------------------------------------------


def judge(path: str, calls: Sequence[Call], prompts: Sequence[str], store: Store | None) -> None:
    """Mark each call `whole`: the streamed text equals the upstream's reply and, through the
    product, the stored message (and the REST `done`) do too, with a finished status (`stop`
    for the OpenAI SDK). Through the product, also the worker's own time to first token."""
    ids = [str(c["reply_id"]).replace("-", "") for c in calls if c.get("reply_id")]
    stored = store.replies(ids) if store else {}
    worker_first = stored_first_token_s(ids) if store else {}
    for call, text in zip(calls, prompts, strict=True):
        expected = expected_reply(text, REPLY_TOKENS)
        reply_id = str(call.get("reply_id", "")).replace("-", "")
        ok = not call.get("error") and call["text"] == expected
        if path != "direct":
            ok = ok and stored.get(reply_id) == ("complete", expected)
            call["worker_first_s"] = worker_first.get(reply_id)
        if path == "rest":
            done = call.get("done") or {}
            ok = ok and done.get("status") == "complete" and done.get("message") == expected
        if path == "openai":
            ok = ok and call.get("finish_reason") == "stop"
        call["whole"] = ok


def summarise(calls: Sequence[Call]) -> dict[str, Any]:
    """Times (p50 / p95 / max), errors and whole replies of judged calls."""

    def times(name: str) -> dict[str, float | None]:
        return ms_summary([c[name] for c in calls if c.get(name) is not None])

    errors = Counter(str(c["error"]) for c in calls if c.get("error"))
    complete = sum(1 for c in calls if c["whole"])
    return {
        "calls": len(calls),
        "ttft": times("first_s"),
        "done": times("total_s"),
        # When the response's status line and headers arrived (product only).
        "headers": times("headers_s"),
        "worker_ttft": times("worker_first_s"),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "complete": complete,
        "incomplete_or_mismatched": len(calls) - sum(errors.values()) - complete,
    }


def direct_round(upstream: Upstream, level: int, tag: str, timeout: float) -> list[Call]:
    prompts = [prompt(f"d{i:04d}", tag) for i in range(level)]
    calls = asyncio.run(direct_calls(upstream.base_url, prompts, timeout=timeout))
    judge("direct", calls, prompts, None)
    return calls


ClientCalls = Callable[..., Coroutine[Any, Any, list[Call]]]
CLIENTS: dict[str, ClientCalls] = {"rest": rest_calls, "openai": openai_calls}


def product_round(
    *,
    path: str,
    base: str,
    people: Sequence[tuple[str, str]],
    tag: str,
    timeout: float,
    store: Store,
    services: dict[str, Service],
    redis_client: Any,
) -> tuple[list[Call], dict[str, Any]]:
    """N streams at once through one of the product's APIs, each person with their key: the
    judged calls, and what the product's processes did meanwhile."""
    offsets = {name: s.log_size() for name, s in services.items()}
    cpu_before = {name: s.cpu_seconds() for name, s in services.items()}
    prompts = [prompt(name, tag) for name, _ in people]
    keys = [key for _, key in people]
    with Sampler(services, redis_client) as sampler:
        calls = asyncio.run(CLIENTS[path](base, keys, prompts, timeout=timeout))
        left = store.wait_quiet(30)
    judge(path, calls, prompts, store)
    processes = {
        "unfinished_after": left,
        "rss_peak_mb": sampler.peak,
        "cpu_seconds": {
            name: round(s.cpu_seconds() - cpu_before[name], 2) for name, s in services.items()
        },
        "llm_queue_peak": sampler.queue_peak,
        "logs": {name: log_findings(s.log_since(offsets[name])) for name, s in services.items()},
    }
    return calls, processes


def merge_processes(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The rounds' process figures together: CPU and log lines summed, peaks the highest."""
    names = rounds[0]["cpu_seconds"].keys()
    logs: dict[str, dict[str, Any]] = {}
    for name in names:
        merged: dict[str, Any] = {"first_error_lines": []}
        for r in rounds:
            for field_name, value in r["logs"][name].items():
                if field_name == "first_error_lines":
                    merged[field_name] = (merged[field_name] + value)[:5]
                else:
                    merged[field_name] = merged.get(field_name, 0) + value
        logs[name] = merged
    return {
        "unfinished_after": max(r["unfinished_after"] for r in rounds),
        "rss_peak_mb": {n: max(r["rss_peak_mb"][n] for r in rounds) for n in names},
        "cpu_seconds": {n: round(sum(r["cpu_seconds"][n] for r in rounds), 2) for n in names},
        "llm_queue_peak": max(r["llm_queue_peak"] for r in rounds),
        "logs": logs,
    }


def overhead(direct: dict[str, Any], product: dict[str, Any], stat: str) -> float | None:
    d, p = direct["ttft"][stat], product["ttft"][stat]
    return round(p - d, 1) if d is not None and p is not None else None


def measure_level(
    *,
    level: int,
    rounds: int,
    upstream: Upstream,
    base: str,
    people: Sequence[tuple[str, str]],
    store: Store,
    services: dict[str, Service],
    redis_client: Any,
) -> dict[str, Any]:
    """`rounds` times, for each API: the upstream direct, then the product, `level` streams at
    once (a fresh person and key per stream). Each API's calls are pooled over its rounds; the
    overhead is the product's figure less the direct calls made right before each round."""
    calls: dict[str, dict[str, list[Call]]] = {p: {"direct": [], "product": []} for p in PATHS}
    per_round: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
    fresh = iter(people)
    for number in range(1, rounds + 1):
        for path in PATHS:
            store.wait_quiet(30)
            tag = f"{path[0]}{level}r{number}"
            direct = direct_round(upstream, level, tag, chat_timeout(level))
            product, processes = product_round(
                path=path,
                base=base,
                people=[next(fresh) for _ in range(level)],
                tag=tag,
                timeout=chat_timeout(level),
                store=store,
                services=services,
                redis_client=redis_client,
            )
            calls[path]["direct"] += direct
            calls[path]["product"] += product
            d, p = summarise(direct), summarise(product)
            per_round[path].append(
                {
                    "round": number,
                    "direct_ttft": d["ttft"],
                    "product_ttft": p["ttft"],
                    "overhead_p50_ms": overhead(d, p, "p50_ms"),
                    "processes": processes,
                }
            )
            log(
                f"{path} {level} (round {number}): direct {p50_p95(d['ttft'])}, product "
                f"{p50_p95(p['ttft'])} ms, whole {p['complete']}/{p['calls']}, errors "
                f"{p['error_kinds']}"
            )
    row: dict[str, Any] = {"level": level}
    for path in PATHS:
        direct_all = summarise(calls[path]["direct"])
        product_all = summarise(calls[path]["product"])
        product_all.update(merge_processes([r["processes"] for r in per_round[path]]))
        row[path] = {
            "direct": direct_all,
            "product": product_all,
            "overhead_p50_ms": overhead(direct_all, product_all, "p50_ms"),
            "overhead_p95_ms": overhead(direct_all, product_all, "p95_ms"),
            "rounds": per_round[path],
        }
        log(
            f"{path} {level}, {rounds} round(s) pooled: direct {p50_p95(direct_all['ttft'])}, "
            f"product {p50_p95(product_all['ttft'])} ms, overhead p50 "
            f"{row[path]['overhead_p50_ms']} ms, p95 {row[path]['overhead_p95_ms']} ms"
        )
    return row


# --- Report ------------------------------------------------------------------------------------


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for row in results["levels"]:
        level = row["level"]
        for path in PATHS:
            side = row[path]
            value = side["overhead_p50_ms"]
            target = TARGET_OVERHEAD_MS.get(level)
            if target is not None:
                rows.append(
                    {
                        "target": f"{path}: overhead p50 at {level} stream(s) ≤ {target} ms",
                        "measured": "—" if value is None else f"{value:+,.0f} ms",
                        "verdict": chat_bench.verdict(None if value is None else value <= target),
                        "by": f"{value - target:+,.0f} ms" if value and value > target else "",
                    }
                )
            product = side["product"]
            whole = product["complete"] == product["calls"]
            rows.append(
                {
                    "target": f"{path}: every reply whole and equal to the upstream's, "
                    f"no error ({level} stream(s))",
                    "measured": f"{product['complete']}/{product['calls']} complete, "
                    f"{product['errors']} errors",
                    "verdict": chat_bench.verdict(whole),
                    "by": "" if whole else f"{product['calls'] - product['complete']} not",
                }
            )
    return rows


def render_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    w = results["worker"]
    lines = [
        "# API benchmark: upstream direct vs the product's APIs",
        "",
        f"`{results['command']}` (bench/api_bench.py), {m['date']}, mode **{results['mode']}**.",
        "",
        f"{m['cpu_count']} × {m['cpu_model']}, {m['memory_gb']} GB, Python {m['python']}, "
        f"Django {m['django']}, PostgreSQL {results['postgres'].get('server_version')}, Redis "
        f"{results['redis_version']}, openai {results['openai_version']}; load average at "
        f"start {m['load_average_at_start']}, at the end {results['load_average_at_end']}.",
        "",
        code_line(results),
        "",
        f"Upstream: OpenAIDouble in its own process, {FIRST_TOKEN_DELAY * 1000:.0f} ms to the "
        f"first token, {REPLY_TOKENS} tokens at {TOKENS_PER_SECOND:.0f} tokens/s. Product: "
        f"daphne (`manage.py serve`), Celery worker `{' '.join(w['argv'][1:])}` "
        f"({w['source']}; the worker said `{(w.get('banner') or ['?'])[0]}`), Redis, "
        "PostgreSQL, each a process of its own. Each stream is a distinct person with an API "
        "key of their own (scope `chat`), used once. Settings changed from the defaults: "
        "API_KEY_REQUESTS_PER_MINUTE=0.",
        "",
        "## Time to first text, p50 (p95), ms",
        "",
        "Direct: the `openai` SDK streaming from the upstream, from the request to the first "
        "text. REST: from the request to the first `delta` event. OpenAI-compatible: the same "
        "SDK with `base_url=<product>/v1`, from the request to the first text. Every call opens "
        "its own connection (a new client per round), direct as through the product. "
        f"{results['rounds']} round(s) per level and API, each one direct round right before "
        "the product round, all N streams at once; the calls of the rounds are pooled, and the "
        "overhead is the product's p50 (p95) less the direct calls' p50 (p95).",
        "",
        "| streams | direct | REST `/api/v1/chat` | direct | OpenAI-compatible `/v1` |",
        "| ---: | --- | --- | --- | --- |",
    ]
    for row in results["levels"]:
        cells = []
        for path in PATHS:
            side = row[path]
            over = side["overhead_p50_ms"], side["overhead_p95_ms"]
            text = p50_p95(side["product"]["ttft"])
            if over[0] is not None:
                text += f": **{over[0]:+,.0f}** ({over[1]:+,.0f})"
            cells += [p50_p95(side["direct"]["ttft"]), text]
        lines.append(f"| {row['level']} | " + " | ".join(cells) + " |")
    lines += ["", "Overhead p50 of each round on its own (product − the direct round before it):"]
    lines += [""]
    for row in results["levels"]:
        for path in PATHS:
            each = ", ".join(
                "—" if r["overhead_p50_ms"] is None else f"{r['overhead_p50_ms']:+,.0f}"
                for r in row[path]["rounds"]
            )
            lines.append(f"- {row['level']} stream(s), {PATH_NAMES[path]}: {each} ms")
    lines += [
        "",
        "## Each level and API, rounds pooled",
        "",
        "| streams | API | whole / calls | errors | incomplete or different | headers p50 "
        "(p95) ms | worker's first token p50 (p95) ms | first text p50 (p95) ms | done p50 "
        "(p95) ms | CPU s web / worker | RSS peak web / worker MB | `llm` queue peak | log "
        "error lines |",
        "| ---: | --- | --- | --- | ---: | --- | --- | --- | --- | --- | --- | ---: | --- |",
    ]
    for row in results["levels"]:
        for path in PATHS:
            d, p = row[path]["direct"], row[path]["product"]
            lines.append(
                f"| {row['level']} | direct | {d['complete']} / {d['calls']} | {d['errors']} "
                f"{d['error_kinds'] or ''} | {d['incomplete_or_mismatched']} | — | — | "
                f"{p50_p95(d['ttft'])} | {p50_p95(d['done'])} | — | — | — | — |"
            )
            cpu, rss = p["cpu_seconds"], p["rss_peak_mb"]
            logs = ", ".join(f"{n} {v['error_lines']}" for n, v in p["logs"].items())
            lines.append(
                f"| {row['level']} | {PATH_NAMES[path]} | {p['complete']} / {p['calls']} | "
                f"{p['errors']} {p['error_kinds'] or ''} | {p['incomplete_or_mismatched']} | "
                f"{p50_p95(p['headers'])} | {p50_p95(p['worker_ttft'])} | {p50_p95(p['ttft'])} "
                f"| {p50_p95(p['done'])} | {cpu['web']} / {cpu['worker']} "
                f"| {rss['web']} / {rss['worker']} | {p['llm_queue_peak']} | {logs} |"
            )
    lines += [
        "",
        "Whole: the streamed text equals the upstream's reply for the prompt, and through the "
        "product the stored message does too (status complete), as does `done.message` (REST); "
        "`finish_reason` is `stop` (OpenAI-compatible). Headers: from the request to the "
        "response's status line and headers. daphne (Twisted) writes them with the first body "
        "bytes: the OpenAI-compatible stream's first chunk (the role) and the REST stream's "
        "`accepted` event are sent as soon as the message is admitted and stored, so for both "
        "it is the admission (connection, key check, rate limits, guardrails, budget, the "
        "stored messages). Worker's first token: the "
        "stored reply's `time_to_first_token_ms`, from the reply's row (written at admission) "
        "to the first token the worker got from the upstream (queueing, the task's start, the "
        "upstream's own 300 ms). CPU seconds and "
        "RSS (process and its children) of the web and worker processes during the rounds "
        "(CPU summed, RSS and queue the highest).",
        "",
        "## Targets (issue 13: the socket's)",
        "",
        "| target | measured | verdict | by how much |",
        "| --- | --- | --- | --- |",
    ]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['verdict']} | {t['by']} |")
    if results["findings"]:
        lines += ["", "## What the logs showed", ""]
        lines += [f"- {finding}" for finding in results["findings"]]
    lines += [
        "",
        f"Upstream requests: {results['upstream_stats']['model_requests']} "
        f"({results['upstream_stats']['outcomes']}).",
        "",
        f"Whole run: {results['total_seconds']} s.",
        "",
    ]
    return "\n".join(lines)


def findings(results: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for row in results["levels"]:
        for path in PATHS:
            for name, info in row[path]["product"]["logs"].items():
                if info["error_lines"]:
                    found.append(
                        f"{path} {row['level']} streams, {name}: {info['error_lines']} error "
                        f"lines, e.g. `{info['first_error_lines'][0][:200]}`"
                    )
    return found


# --- Main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="1/10 streams")
    parser.add_argument("--levels", help="concurrent streams per round (default 1,10,50)")
    parser.add_argument(
        "--rounds", type=int, help="rounds per level and path, pooled (default 3; quick 1)"
    )
    parser.add_argument("--output-dir", type=Path)
    parser.add_argument("--keep-db", action="store_true", help=f"keep {DB_NAME} afterwards")
    args = parser.parse_args(argv)
    levels = args.levels or ("1,10" if args.quick else "1,10,50")
    args.levels = [int(x) for x in levels.split(",")]
    if any(level < 1 or level > 500 for level in args.levels):
        parser.error("levels are between 1 and 500 streams")
    args.rounds = args.rounds or (1 if args.quick else 3)
    if not 1 <= args.rounds <= 10:
        parser.error("rounds are between 1 and 10")
    args.output_dir = args.output_dir or (QUICK_DIR if args.quick else RESULTS_DIR)
    return args


def migrate(env: dict[str, str]) -> None:
    done = subprocess.run(  # noqa: S603  (fixed arguments)
        [str(BIN / "python"), "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"migrate failed:\n{done.stdout}\n{done.stderr}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    import openai
    import redis

    try:
        pg = postgres_facts()
        redis_client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_timeout=5)
        redis_version = redis_client.info("server")["redis_version"]
    except (psycopg.OperationalError, redis.exceptions.ConnectionError) as exc:
        print(f"SKIPPED: PostgreSQL or Redis is unreachable: {exc}".strip(), file=sys.stderr)
        return 2
    started = time.monotonic()
    pool = os.environ.get("BENCH_WORKER_POOL")
    concurrency = os.environ.get("BENCH_WORKER_CONCURRENCY")
    worker_command = worker_argv(ROOT / "Makefile", pool, concurrency)
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "command": "python -m bench.api_bench" + (" --quick" if args.quick else ""),
        "machine": machine_facts(),
        "postgres": pg,
        "redis_version": redis_version,
        "openai_version": openai.__version__,
        "git": git_state(),
        "upstream": {
            "first_token_delay_s": FIRST_TOKEN_DELAY,
            "tokens_per_second": TOKENS_PER_SECOND,
            "reply_tokens": REPLY_TOKENS,
        },
        "settings_changed": {"API_KEY_REQUESTS_PER_MINUTE": "0"},
        "worker": {
            "argv": worker_command,
            "flags": worker_flags(worker_command),
            "source": (
                "BENCH_WORKER_POOL / BENCH_WORKER_CONCURRENCY"
                if pool or concurrency
                else "the Makefile's `worker` target"
            ),
        },
        "rounds": args.rounds,
        "levels": [],
    }
    scratch = Path(tempfile.mkdtemp(prefix="api-bench-"))
    log_dir = scratch / "logs"
    log_dir.mkdir()
    log(f"logs in {log_dir}; worker: {' '.join(worker_command[1:])}")
    env = service_env({**PROD_ENV, "LOCAL_DATA_DIR": str(scratch / "prod")}, PROD_UNSET)
    try:
        with stopping([]) as running:
            upstream = Upstream(
                first_token_delay=FIRST_TOKEN_DELAY, tokens_per_second=TOKENS_PER_SECOND
            )
            running.append(upstream)
            upstream.set_reply_words(words_for(REPLY_TOKENS))
            log(f"upstream at {upstream.base_url}")

            audit_bench.recreate_database(DB_NAME)
            redis_client.flushdb()
            migrate(env)
            warm = 4
            needed = warm + len(PATHS) * sum(args.levels) * args.rounds
            people = setup_people(
                PROD_ENV | {"LOCAL_DATA_DIR": str(scratch / "prod")},
                PROD_UNSET,
                upstream.base_url,
                needed,
                False,
            )
            names = [name for name, _ in people]
            keyed = list(zip(names, create_keys(env, names), strict=True))
            log(f"database ready: {len(keyed)} people with an API key each")

            port = free_port()
            base = f"http://127.0.0.1:{port}"
            web = start_web(env, port, log_dir)
            running.append(web)
            worker = start_worker(env, worker_command, log_dir)
            running.append(worker)
            results["worker"]["banner"] = re.findall(
                r"concurrency:.*", worker.log_since(worker.start_offset)
            )[:1]
            services = {"web": web, "worker": worker}
            store = Store(database=DB_NAME, env=env)

            # Not counted: first connections, imports, caches of both paths.
            warm_up = {}
            for index, path in enumerate(PATHS):
                calls, _ = product_round(
                    path=path,
                    base=base,
                    people=keyed[index * 2 : index * 2 + 2],
                    tag="warm",
                    timeout=chat_timeout(2),
                    store=store,
                    services=services,
                    redis_client=redis_client,
                )
                warm_up[path] = f"{sum(c['whole'] for c in calls)}/{len(calls)} whole"
            results["warm_up"] = warm_up
            log(f"product up (web {web.pid}, worker {worker.pid}); warm-up {warm_up}")

            offset = warm
            for level in args.levels:
                used = level * args.rounds * len(PATHS)
                results["levels"].append(
                    measure_level(
                        level=level,
                        rounds=args.rounds,
                        upstream=upstream,
                        base=base,
                        people=keyed[offset : offset + used],
                        store=store,
                        services=services,
                        redis_client=redis_client,
                    )
                )
                offset += used
            results["upstream_stats"] = upstream.stats()
    finally:
        if not args.keep_db:
            with suppress(psycopg.Error):
                audit_bench.drop_database(DB_NAME)
        with suppress(redis.exceptions.RedisError):
            redis_client.flushdb()

    write_results(
        results,
        stem="api",
        output_dir=args.output_dir,
        log_dir=log_dir,
        started=started,
        evaluate=evaluate,
        findings=findings,
        render_markdown=render_markdown,
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, Stopped):
        print("interrupted; the benchmark's processes were stopped", file=sys.stderr)
        sys.exit(130)
