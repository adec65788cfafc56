from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, reverse_lazy

from accounts import views as accounts_views
from accounts.forms import SignInForm
from accounts.login_limit import login_rate_limited
from api import v1 as api_v1
from costs import views as costs_views
from enterprise_ai import views
from preferences import views as preferences_views

handler500 = "enterprise_ai.views.server_error"

urlpatterns = [
    path(
        "accounts/login/",
        login_rate_limited(
            auth_views.LoginView.as_view(
                redirect_authenticated_user=True, authentication_form=SignInForm
            )
        ),
        name="login",
    ),
    path("accounts/api-keys/", accounts_views.api_keys, name="api_keys"),
    path(
        "accounts/api-keys/<uuid:public_id>/revoke/",
        accounts_views.api_key_revoke_view,
        name="api_key_revoke",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Anyone signed in changes their own password here (old password required); every other
    # session of theirs ends and its sockets close (accounts/receivers.py).
    path(
        "accounts/password/",
        auth_views.PasswordChangeView.as_view(
            template_name="registration/password_change.html",
            success_url=reverse_lazy("password_change_done"),
        ),
        name="password_change",
    ),
    path(
        "accounts/password/done/",
        auth_views.PasswordChangeDoneView.as_view(
            template_name="registration/password_change_done.html"
        ),
        name="password_change_done",
    ),
    # The person's own pages: preferences (custom instructions) and usage.
    path("settings/", preferences_views.preferences_page, name="preferences"),
    path("usage/", costs_views.my_usage, name="my_usage"),
    path("admin/", admin.site.urls),
    # The REST API (docs/api.md): API keys only, session cookies ignored.
    path("api/v1/", api_v1.urls()),
    # The OpenAI-compatible endpoint (docs/api.md): API keys only, in OpenAI's shapes.
    path("v1/", include("api.openai", namespace="openai-v1")),
    path(".well-known/security.txt", views.security_txt, name="security-txt"),
    path("", include("conversations.urls")),
]
