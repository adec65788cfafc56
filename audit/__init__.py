"""Audit trail (append-only, hash-chained). Built in the audit issue; see docs/architecture.md."""
