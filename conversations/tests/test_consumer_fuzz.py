"""Fuzzing the chat socket: random frames through the real ASGI stack.

Whatever a browser (or anyone holding a session) sends, every frame gets a well-formed
answer or none, never an `internal` error or a server exception, nothing is logged as an
error, nothing is stored, and the socket stays open and usable.

Frames are what a real client can put on the wire: text frames are valid UTF-8 (servers
close the connection on anything else), but the JSON inside may escape lone surrogates,
nest deeply, use huge numbers, or carry strings at the size limits. Sends that could be
valid (and so would store a message) are left out by construction; the last test shows a
valid send still works after a barrage.

Hypothesis drives a synchronous test; each example opens its own socket inside
`asyncio.run` (a fresh event loop per example).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conversations.models import Conversation, Message
from tests.support import connected, is_final, receive_until

pytestmark = pytest.mark.django_db(transaction=True)

OWNED = "<owned conversation id>"  # replaced by the real id when the frame is sent
ERROR_CODE = re.compile(r"^[a-z][a-z_]{1,40}$")


# --- Strategies -----------------------------------------------------------------------------

# Strings as json.loads can produce them: any code point, lone surrogates included (sent as
# \ud800 escapes, which are valid UTF-8 on the wire).
any_text = st.text(st.characters(codec=None), max_size=30)


@st.composite
def huge_text(draw: st.DrawFn) -> str:
    """Strings around the message and frame limits, in 1- to 4-byte characters."""
    char = draw(st.sampled_from(["x", " ", "é", "€", "😀", "\n"]))
    message, frame = django_settings.CHAT_MAX_MESSAGE_CHARS, django_settings.CHAT_MAX_FRAME_BYTES
    size = draw(
        st.sampled_from([message - 1, message, message + 1, frame // 4, frame - 64, frame + 1])
    )
    return char * size


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
ids = st.one_of(
    st.just(OWNED),
    st.uuids().map(str),
    st.uuids().map(lambda u: "{" + str(u).upper() + "}"),
    st.uuids().map(lambda u: f"urn:uuid:{u}"),
    st.uuids().map(lambda u: u.hex),
    st.sampled_from(["", " ", "null", "00000000-0000-0000-0000-00000000000g", "../../etc"]),
    st.integers(),
)
field_values = {
    "type": st.one_of(
        st.sampled_from(["send", "stop", "subscribe", "SEND", " send", "chat.delta", "done"]),
        json_values,
    ),
    "conversation": st.one_of(ids, json_values),
    "message": st.one_of(ids, json_values),
    "text": st.one_of(any_text, huge_text(), json_values),
    "model": st.one_of(st.sampled_from(["demo", "", "DEMO", "demo "]), json_values),
}


@st.composite
def frame_objects(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.sets(st.sampled_from(sorted(field_values)), max_size=len(field_values)))
    frame = {key: draw(field_values[key]) for key in sorted(keys)}
    frame.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)))
    return frame


def could_store(frame: dict[str, Any]) -> bool:
    """Whether this frame might be a valid send (which would store a message)."""
    text = frame.get("text")
    return (
        frame.get("type") == "send"
        and isinstance(text, str)
        and bool(text.strip())
        and (not frame.get("model") or str(frame.get("model")).strip().lower() == "demo")
        and frame.get("conversation") in (None, OWNED)
    )


@dataclass(frozen=True)
class Frame:
    """One WebSocket frame: text (what the browser sends) or bytes."""

    text: str | None = None
    data: bytes | None = None


def dumps(value: Any, compact: bool) -> str:
    return json.dumps(value, separators=(",", ":") if compact else None)  # \uXXXX-escaped


object_frames = st.builds(
    lambda frame, compact: Frame(text=dumps(frame, compact)),
    frame_objects().filter(lambda f: not could_store(f)),
    st.booleans(),
)
frames = st.one_of(
    object_frames,
    object_frames,
    object_frames,
    st.builds(lambda v: Frame(text=dumps(v, True)), json_values),  # not an object
    st.builds(lambda t: Frame(text=t), st.text(max_size=40)),  # mostly not JSON
    st.sampled_from(
        [
            Frame(text=""),
            Frame(text="{"),
            Frame(text='{"type": "send"'),
            Frame(text="NaN"),
            Frame(text='{"type": "subscribe", "conversation": NaN}'),
            Frame(text='{"type":"send","type":"stop"}'),
            Frame(text="[" * 200 + "]" * 200),
            Frame(text='{"type":' * 200 + '"send"' + "}" * 200),
            Frame(text="1" * 5000),  # beyond int's default digit limit
            Frame(text="\x00\ufeff{}"),
        ]
    ),
    st.builds(lambda b: Frame(data=b), st.binary(max_size=64)),
)


# --- The socket -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    cookie: str
    owned: str  # fuzzed frames may name it
    sentinel: str  # they never do: its snapshot marks the end of their answers


@pytest.fixture
def stage(owner, session_cookie, settings, fast_demo) -> Iterator[Stage]:
    # Thousands of frames from one person: the frame rate limit would answer most of them
    # (test_rate_limits.py holds it to account).
    settings.CHAT_FRAMES_PER_MINUTE = 0
    owned, sentinel = (
        Conversation.objects.create(owner=owner, title=title, model="demo")
        for title in ("Kept", "Sentinel")
    )
    Message.objects.create(
        conversation=owned, role="user", content="hello", status="complete", model="demo"
    )
    yield Stage(
        cookie=session_cookie(owner), owned=str(owned.public_id), sentinel=str(sentinel.public_id)
    )


def counts() -> tuple[int, int]:
    return Conversation.objects.count(), Message.objects.count()


def wire(frame: Frame, owned: str) -> Frame:
    if frame.text is None:
        return frame
    return Frame(text=frame.text.replace(json.dumps(OWNED)[1:-1], owned))


async def exchange(stage: Stage, sent: list[Frame]) -> list[dict[str, Any]]:
    """Send the frames, then a valid subscribe to the sentinel conversation; return every
    frame received before its snapshot (the consumer handles frames in order, so all the
    answers to the fuzzed frames come first)."""
    comm: WebsocketCommunicator = await connected(stage.cookie)
    try:
        for frame in sent:
            frame = wire(frame, stage.owned)
            # send_input, not send_to: empty frames are frames too.
            payload = {"text": frame.text} if frame.text is not None else {"bytes": frame.data}
            await comm.send_input({"type": "websocket.receive", **payload})
        await comm.send_json_to({"type": "subscribe", "conversation": stage.sentinel})
        received = await receive_until(
            comm,
            lambda f: f.get("type") == "snapshot" and f.get("conversation") == stage.sentinel,
            timeout=5,
        )
    finally:
        await comm.disconnect()
    return received[:-1]


def assert_well_formed(answer: dict[str, Any], owned: str) -> None:
    if answer.get("type") == "snapshot":  # a subscribe to the owned conversation
        assert answer["conversation"] == owned and isinstance(answer["messages"], list)
        return
    assert answer.get("type") == "error", answer
    assert set(answer) <= {"type", "code", "reason", "retry_after"}, answer
    assert isinstance(answer["code"], str) and ERROR_CODE.match(answer["code"]), answer
    assert answer["code"] != "internal", answer
    assert isinstance(answer["reason"], str) and answer["reason"].strip(), answer


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
@given(sent=st.lists(frames, min_size=1, max_size=4))
@example(sent=[Frame(text='{"type": "subscribe", "conversation": "\\ud800"}')])
@example(sent=[Frame(text='{"type": "send", "text": "\\ud83d\\ude00", "model": "nope"}')])
@example(sent=[Frame(text='{"type": "send", "text": "hi", "model": {"k": 1}}')])
@example(sent=[Frame(text='{"type": "stop", "message": "urn:uuid:' + str(uuid.UUID(int=1)) + '"}')])
def test_random_frames_get_a_clean_answer_and_store_nothing(
    stage: Stage, caplog: pytest.LogCaptureFixture, sent: list[Frame]
) -> None:
    assert_handled_cleanly(stage, caplog, sent)


def assert_handled_cleanly(
    stage: Stage, caplog: pytest.LogCaptureFixture, sent: list[Frame]
) -> None:
    caplog.clear()
    before = counts()
    with caplog.at_level(logging.WARNING):
        answers = asyncio.run(exchange(stage, sent))
    assert len(answers) <= len(sent), answers
    for answer in answers:
        assert_well_formed(answer, stage.owned)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert counts() == before


# Frames the fuzzer found crashing the consumer once: kept as regression tests.
@pytest.mark.parametrize(
    "text",
    [
        '{"type": "send", "conversation": null, "text": "\\ud800"}',
        '{"type": "send", "text": "hi", "model": "\\udfff"}',
    ],
    ids=["surrogate-in-text", "surrogate-in-model"],
)
def test_a_lone_surrogate_is_refused_cleanly(stage, caplog, text: str) -> None:
    assert_handled_cleanly(stage, caplog, [Frame(text=text)])


def test_deeply_nested_json_is_refused_cleanly(stage, caplog) -> None:
    assert_handled_cleanly(stage, caplog, [Frame(text="[" * 5000 + "]" * 5000)])


@pytest.mark.parametrize("kind", ['["send"]', '{"a": 1}'], ids=["list", "object"])
def test_a_type_that_is_not_a_string_is_refused_cleanly(stage, caplog, kind: str) -> None:
    assert_handled_cleanly(stage, caplog, [Frame(text=f'{{"type": {kind}}}')])


async def test_a_valid_send_works_after_a_barrage_of_bad_frames(stage: Stage) -> None:
    comm = await connected(stage.cookie)
    bad = [
        "{",
        "[]",
        '{"type": 1}',
        '{"type": "send", "text": ""}',
        '{"type": "send", "text": "hi", "model": ["demo"]}',
        '{"type": "stop", "message": "nope"}',
        '{"type": "subscribe", "conversation": "' + str(uuid.uuid4()) + '"}',
        "x" * (django_settings.CHAT_MAX_FRAME_BYTES + 1),
    ]
    for text in bad:
        await comm.send_to(text_data=text)
    await comm.send_to(bytes_data=b"\xff\xfe")
    errors = [await comm.receive_json_from(timeout=10) for _ in range(len(bad) + 1)]
    assert [e["type"] for e in errors] == ["error"] * (len(bad) + 1)
    assert "internal" not in [e["code"] for e in errors]

    await comm.send_json_to(
        {"type": "send", "conversation": stage.owned, "text": "Still there?", "model": "demo"}
    )
    frames = await receive_until(comm, is_final)
    await comm.disconnect()
    assert frames[0]["type"] == "accepted" and frames[-1]["type"] == "done", frames
    assert frames[-1]["status"] == "complete"
