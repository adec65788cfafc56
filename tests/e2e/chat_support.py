"""Shared by the chat layout and accessibility browser tests: a server with a conversation
holding a highlighted code block, browser contexts at desktop and phone widths in light or
dark, and screenshots kept under test-artifacts/ for a person to look at."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, RestartableServer

WIDTHS = {1280: {"width": 1280, "height": 860}, 390: {"width": 390, "height": 844}}

CODE_REPLY = """Here is a **small** example:

```python
def greet(name: str) -> str:
    # Say hello.
    return f"Hello, {name}!"
```

> Quoted advice.

- one
- two
"""

SEED = f"""
from accounts.models import User
from conversations.models import Conversation, Message
admin = User.objects.get(username="e2e-admin")
conversation = Conversation.objects.create(owner=admin, title="Code sample", model="demo")
Message.objects.create(conversation=conversation, role="user", status="complete",
                       content="Show me a Python function")
Message.objects.create(conversation=conversation, role="assistant", status="complete",
                       model="demo", content={CODE_REPLY!r})
print(conversation.public_id)
"""


class ChatServer:
    def __init__(self, server: RestartableServer, conversation: str) -> None:
        self.server = server.server
        self.base_url = server.base_url
        self.conversation_url = f"{server.base_url}/c/{conversation}/"


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatServer]:
    server = RestartableServer(Path(tmp_path_factory.mktemp("chat-ui")))
    conversation = server.manage("shell", "-c", SEED).strip().splitlines()[-1]
    server.start()
    try:
        yield ChatServer(server, conversation)
    finally:
        server.stop()


def new_page(browser: Any, width: int, scheme: str = "light", **options: Any) -> Any:
    context = browser.new_context(viewport=WIDTHS[width], color_scheme=scheme, **options)
    return context.new_page()


def sign_in(page: Any, chat: ChatServer) -> None:
    from playwright.sync_api import expect

    page.goto(f"{chat.base_url}/accounts/login/")
    page.fill("#id_username", chat.server.username)
    page.fill("#id_password", chat.server.password)
    page.click("button[type=submit]")
    expect(page).not_to_have_url(re.compile(r"/accounts/login/"))


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
