"""App configs of the project itself."""

from django.contrib.admin.apps import AdminConfig


class ConsoleAdminConfig(AdminConfig):
    """Django's admin, served by the audited, role-based console site (audit/console.py)."""

    default_site = "audit.console.ConsoleSite"
