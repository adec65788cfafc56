"""ASGI entry point: HTTP goes to Django, WebSockets to the chat consumer.

WebSocket connections must come from the app's own page (the whole Origin, scheme, host in
ALLOWED_HOSTS and port, against the request's; or an origin in CSRF_TRUSTED_ORIGINS: see
audit/websocket.py; a missing Origin is refused, and every refusal is audited) and carry the
user's session.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "enterprise_ai.settings")

# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from audit.websocket import allowed_hosts_origin_validator  # noqa: E402
from conversations.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": allowed_hosts_origin_validator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
