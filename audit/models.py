"""Audit models arrive with the audit-trail issue."""
