"""Open chat sockets end with their session: sign-out, password change, deactivation, an
administrator's "End all sessions", idle timeout and absolute lifetime. Through the full
ASGI stack with the embedded channel layer; nothing is mocked."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async as sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.hashers import make_password

from accounts import sessions
from accounts.models import User, UserSession
from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AuditEvent
from conversations.consumers import CLOSE_SESSION_ENDED, CLOSE_UNAUTHENTICATED
from conversations.models import Message
from tests.support import communicator, connected, signed_in

pytestmark = pytest.mark.django_db(transaction=True)

SEND = {"type": "send", "conversation": None, "text": "Are you still there?", "model": "demo"}


def session_key_of(cookie: str) -> str:
    return cookie.split("=", 1)[1]


def set_session_times(cookie: str, *, login_ago: int, seen_ago: int) -> None:
    store = sessions.session_store(session_key_of(cookie))
    now = sessions.now_seconds()
    store[sessions.LOGIN_AT_KEY] = now - login_ago
    store[sessions.SEEN_AT_KEY] = now - seen_ago
    store.save()


async def message_count() -> int:
    return await sync_to_async(Message.objects.count)()


async def assert_closed_for_session_end(comm: WebsocketCommunicator, timeout: float = 5) -> None:
    """The server closes the socket by itself, with the session-ended code."""
    output = await comm.receive_output(timeout=timeout)
    assert output == {"type": "websocket.close", "code": CLOSE_SESSION_ENDED}, output


async def assert_next_frame_ignored(comm: WebsocketCommunicator) -> None:
    before = await message_count()
    await comm.send_json_to(SEND)
    assert await comm.receive_nothing(timeout=0.5)
    assert await message_count() == before
    await comm.disconnect()


def socket_events(reason: str | None = None) -> list[AuditEvent]:
    found = AuditEvent.objects.filter(action=AuditAction.WS_SESSION_ENDED).order_by("sequence")
    return [e for e in found if reason is None or e.details["reason"] == reason]


# --- Sign-out ------------------------------------------------------------------------------


async def test_logout_closes_the_sessions_socket_and_its_next_frame_is_ignored(
    owner, fast_demo
) -> None:
    client, cookie = await sync_to_async(signed_in)(owner)
    comm = await connected(cookie)
    response = await sync_to_async(client.post)("/accounts/logout/")
    assert response.status_code == 302
    await assert_closed_for_session_end(comm)
    await assert_next_frame_ignored(comm)
    [event] = await sync_to_async(socket_events)(sessions.LOGGED_OUT)
    assert event.actor_id == owner.pk and event.details["trigger"] == "event"


async def test_logout_leaves_the_same_persons_other_browser_open(owner, fast_demo) -> None:
    client, cookie = await sync_to_async(signed_in)(owner)
    _, other_cookie = await sync_to_async(signed_in)(owner)
    mine, other = await connected(cookie), await connected(other_cookie)
    await sync_to_async(client.post)("/accounts/logout/")
    await assert_closed_for_session_end(mine)
    assert await other.receive_nothing(timeout=0.5)
    await other.send_json_to(SEND)
    assert (await other.receive_json_from(timeout=5))["type"] == "accepted"
    await other.disconnect()
    await mine.disconnect()


# --- Account changes -----------------------------------------------------------------------


async def test_deactivation_closes_the_socket_and_deletes_the_sessions(owner) -> None:
    _, cookie = await sync_to_async(signed_in)(owner)
    comm = await connected(cookie)
    user = await sync_to_async(User.objects.get)(pk=owner.pk)
    user.is_active = False
    await sync_to_async(user.save)()
    await assert_closed_for_session_end(comm)
    await assert_next_frame_ignored(comm)
    assert not await sync_to_async(UserSession.objects.filter(user_id=owner.pk).exists)()
    event = await sync_to_async(AuditEvent.objects.get)(action=AuditAction.SESSIONS_ENDED)
    assert event.details == {"reason": sessions.DEACTIVATED, "sessions": 1}


async def test_password_change_ends_every_session_and_socket(owner, administrator) -> None:
    _, cookie = await sync_to_async(signed_in)(owner)
    _, other_cookie = await sync_to_async(signed_in)(owner)
    first, second = await connected(cookie), await connected(other_cookie)
    admin_client, _ = await sync_to_async(signed_in)(administrator)
    response = await sync_to_async(admin_client.post)(
        f"/admin/accounts/user/{owner.pk}/password/",
        {"password1": "a new long passphrase 42", "password2": "a new long passphrase 42"},
    )
    assert response.status_code == 302, response.content[:500]
    await assert_closed_for_session_end(first)
    await assert_closed_for_session_end(second)
    await assert_next_frame_ignored(first)
    assert not await sync_to_async(UserSession.objects.filter(user_id=owner.pk).exists)()
    # A new socket with an old cookie is refused at the handshake.
    ok, _ = await communicator(cookie).connect()
    assert not ok


async def test_own_password_change_keeps_this_session_and_ends_the_others(administrator) -> None:
    client, _ = await sync_to_async(signed_in)(administrator)
    _, other_cookie = await sync_to_async(signed_in)(administrator)
    other = await connected(other_cookie)
    response = await sync_to_async(client.post)(
        f"/admin/accounts/user/{administrator.pk}/password/",
        {"password1": "a new long passphrase 42", "password2": "a new long passphrase 42"},
    )
    assert response.status_code == 302, response.content[:500]
    await assert_closed_for_session_end(other)
    await assert_next_frame_ignored(other)
    # update_session_auth_hash gave this browser a new session under a new key: still in.
    assert (await sync_to_async(client.get)("/")).status_code == 200
    assert not await sync_to_async(
        UserSession.objects.filter(session_key=session_key_of(other_cookie)).exists
    )()
    assert await sync_to_async(UserSession.objects.filter(user_id=administrator.pk).count)() == 1


async def test_anyone_changes_their_own_password_and_their_other_browsers_are_signed_out(
    staff_member,
) -> None:
    old_password = "an old long passphrase 7"
    await sync_to_async(staff_member.set_password)(old_password)
    await sync_to_async(staff_member.save)()
    client, _ = await sync_to_async(signed_in)(staff_member)
    _, other_cookie = await sync_to_async(signed_in)(staff_member)
    other = await connected(other_cookie)

    refused = await sync_to_async(client.post)(
        "/accounts/password/",
        {
            "old_password": "not the password",
            "new_password1": "a new long passphrase 42",
            "new_password2": "a new long passphrase 42",
        },
    )
    assert refused.status_code == 200
    assert "Your old password was entered incorrectly" in refused.content.decode()
    assert await other.receive_nothing(timeout=0.3)

    response = await sync_to_async(client.post)(
        "/accounts/password/",
        {
            "old_password": old_password,
            "new_password1": "a new long passphrase 42",
            "new_password2": "a new long passphrase 42",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/accounts/password/done/"
    await assert_closed_for_session_end(other)
    await assert_next_frame_ignored(other)
    assert (await sync_to_async(client.get)("/")).status_code == 200  # this browser stays in
    changed = await sync_to_async(
        AuditEvent.objects.filter(action=AuditAction.PASSWORD_CHANGED).order_by("sequence").last
    )()
    assert changed is not None and changed.actor_id == staff_member.pk  # by themselves
    ended = await sync_to_async(
        AuditEvent.objects.filter(action=AuditAction.SESSIONS_ENDED).order_by("sequence").last
    )()
    assert ended is not None and ended.details["reason"] == sessions.PASSWORD_CHANGED


# --- An administrator ends all sessions ----------------------------------------------------


async def test_end_all_sessions_action_closes_sockets_and_deletes_sessions(
    owner, colleague, administrator
) -> None:
    _, cookie = await sync_to_async(signed_in)(owner)
    _, colleague_cookie = await sync_to_async(signed_in)(colleague)
    comm, bystander = await connected(cookie), await connected(colleague_cookie)
    admin_client, _ = await sync_to_async(signed_in)(administrator)
    response = await sync_to_async(admin_client.post)(
        "/admin/accounts/user/",
        {"action": "end_all_sessions", "_selected_action": [owner.pk]},
    )
    assert response.status_code == 302
    await assert_closed_for_session_end(comm)
    await assert_next_frame_ignored(comm)
    assert await bystander.receive_nothing(timeout=0.3)
    await bystander.disconnect()

    assert not await sync_to_async(UserSession.objects.filter(user_id=owner.pk).exists)()
    assert await sync_to_async(UserSession.objects.filter(user_id=colleague.pk).exists)()
    event = await sync_to_async(AuditEvent.objects.get)(action=AuditAction.SESSIONS_ENDED)
    assert event.actor_id == administrator.pk
    assert event.target_id == str(owner.public_id)
    assert event.details == {"reason": sessions.ENDED_BY_ADMINISTRATOR, "sessions": 1}


def test_end_all_sessions_is_not_offered_to_compliance_officers(owner, compliance_officer) -> None:
    client, _ = signed_in(compliance_officer)
    _, owner_cookie = signed_in(owner)
    page = client.get("/admin/accounts/user/")
    assert page.status_code == 200
    assert "end_all_sessions" not in page.content.decode()
    client.post(
        "/admin/accounts/user/", {"action": "end_all_sessions", "_selected_action": [owner.pk]}
    )
    assert UserSession.objects.filter(session_key=session_key_of(owner_cookie)).exists()
    assert not AuditEvent.objects.filter(action=AuditAction.SESSIONS_ENDED).exists()


# --- Every frame re-checks the session (no broadcast needed) -------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("delete_session", sessions.SESSION_GONE),
        ("deactivate_quietly", sessions.DEACTIVATED),
        ("password_quietly", sessions.PASSWORD_CHANGED),
    ],
)
async def test_a_frame_on_an_ended_session_is_refused_and_audited(
    owner, change: str, reason: str
) -> None:
    _, cookie = await sync_to_async(signed_in)(owner)
    comm = await connected(cookie)

    def apply() -> None:
        # Writes that send no signal: only the per-frame check can notice them.
        if change == "delete_session":
            UserSession.objects.filter(session_key=session_key_of(cookie)).delete()
        elif change == "deactivate_quietly":
            User.objects.filter(pk=owner.pk).update(is_active=False)
        else:
            User.objects.filter(pk=owner.pk).update(password=make_password("other passphrase"))

    await sync_to_async(apply)()
    before = await message_count()
    await comm.send_json_to(SEND)
    await assert_closed_for_session_end(comm)
    assert await message_count() == before
    await assert_next_frame_ignored(comm)
    [event] = await sync_to_async(socket_events)()
    assert event.outcome == AuditOutcome.DENIED
    assert event.details["reason"] == reason and event.details["trigger"] == "frame"


# --- Idle timeout and absolute lifetime ----------------------------------------------------


@pytest.mark.parametrize(
    ("login_ago", "seen_ago", "reason"),
    [
        (9 * 3600, 10, sessions.ABSOLUTE_LIFETIME),
        (3600, 31 * 60, sessions.IDLE_TIMEOUT),
    ],
)
async def test_an_expired_session_closes_the_socket_at_its_next_frame(
    owner, login_ago: int, seen_ago: int, reason: str
) -> None:
    _, cookie = await sync_to_async(signed_in)(owner)
    comm = await connected(cookie)
    await sync_to_async(set_session_times)(cookie, login_ago=login_ago, seen_ago=seen_ago)
    before = await message_count()
    await comm.send_json_to(SEND)
    await assert_closed_for_session_end(comm)
    assert await message_count() == before
    await comm.disconnect()
    [event] = await sync_to_async(socket_events)(reason)
    assert event.details["trigger"] == "frame"


async def test_a_socket_closes_by_itself_when_its_session_reaches_the_limit(
    owner, settings
) -> None:
    settings.SESSION_ABSOLUTE_LIFETIME_SECONDS = 3600
    _, cookie = await sync_to_async(signed_in)(owner)
    # Signed in 3599 s ago: the absolute limit is one second away, and nothing is sent.
    await sync_to_async(set_session_times)(cookie, login_ago=3599, seen_ago=0)
    comm = await connected(cookie)
    await assert_closed_for_session_end(comm, timeout=6)
    await comm.disconnect()
    [event] = await sync_to_async(socket_events)(sessions.ABSOLUTE_LIFETIME)
    assert event.details["trigger"] == "timer"


async def test_socket_frames_count_as_activity(owner) -> None:
    _, cookie = await sync_to_async(signed_in)(owner)
    # Idle for 29 minutes: a frame now keeps the session alive and is written back.
    await sync_to_async(set_session_times)(cookie, login_ago=3600, seen_ago=29 * 60)
    comm = await connected(cookie)
    await comm.send_json_to({"type": "nonsense"})
    assert (await comm.receive_json_from(timeout=5))["code"] == "unknown_type"
    await comm.disconnect()
    store = await sync_to_async(sessions.session_store)(session_key_of(cookie))
    seen_at = await sync_to_async(store.get)(sessions.SEEN_AT_KEY)
    assert sessions.now_seconds() - seen_at < 10


async def test_an_expired_session_cannot_open_a_socket(owner) -> None:
    _, cookie = await sync_to_async(signed_in)(owner)
    await sync_to_async(set_session_times)(cookie, login_ago=3600, seen_ago=31 * 60)
    ok, code = await communicator(cookie).connect()
    assert not ok and code == CLOSE_UNAUTHENTICATED
