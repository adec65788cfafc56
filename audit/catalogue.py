"""The audit event catalogue: every action the trail records, with what it means.

docs/audit.md renders the same catalogue for compliance officers; a test keeps the two in
step. Adding an event: add it here with its description, call `audit_record(...)` from the
service that causes it (in the same transaction), add it to docs/audit.md, and test it.
"""

from __future__ import annotations

from django.db import models


class AuditAction(models.TextChoices):
    # Sign-in and sessions
    LOGIN = "auth.login", "Signed in"
    LOGIN_FAILED = "auth.login_failed", "Sign-in failed"
    LOCKOUT = "auth.lockout", "Locked out after repeated failures"
    LOGIN_RATE_LIMITED = "auth.rate_limited", "Sign-in attempts from one address rate-limited"
    LOGOUT = "auth.logout", "Signed out"
    PASSWORD_CHANGED = "auth.password_changed", "Password changed"
    SESSION_EXPIRED = "auth.session_expired", "Session expired (idle or absolute limit)"
    SESSIONS_ENDED = "auth.sessions_ended", "All of a person's sessions ended"
    LOCKOUT_CLEARED = "auth.lockout_cleared", "Sign-in lockout cleared by an administrator"
    # Chat socket
    WS_CONNECT = "ws.connect", "Chat socket opened"
    WS_REFUSED = "ws.refused", "Chat socket refused"
    WS_DISCONNECT = "ws.disconnect", "Chat socket closed"
    WS_SESSION_ENDED = "ws.session_ended", "Chat socket closed: its session ended"
    WS_RATE_LIMITED = "ws.rate_limited", "Chat socket frames refused by a rate limit"
    # Conversations
    MESSAGE_SENT = "message.sent", "Message sent"
    MESSAGE_REGENERATED = "message.regenerated", "Reply regenerated (a new version)"
    MESSAGE_EDITED = "message.edited", "Last message edited and resent (a new version)"
    REPLY_COMPLETED = "reply.completed", "Reply completed"
    REPLY_FAILED = "reply.failed", "Reply failed"
    REPLY_CANCELLED = "reply.cancelled", "Reply cancelled"
    MODEL_REFUSED = "model.refused", "Model refused"
    MESSAGE_RATE_LIMITED = "message.rate_limited", "Messages refused by a rate limit"
    CONVERSATION_ACCESS_DENIED = "conversation.access_denied", "Conversation access denied"
    CONVERSATION_VIEWED = "conversation.viewed", "Conversation reviewed in the console"
    CONVERSATION_CREATED = "conversation.created", "Conversation created (without a message)"
    CONVERSATION_DELETED = "conversation.deleted", "Conversation deleted by its owner"
    CONVERSATION_DELETE_REFUSED = "conversation.delete_refused", "Conversation deletion refused"
    CONVERSATION_RENAMED = "conversation.renamed", "Conversation renamed by its owner"
    CONVERSATION_EXPORTED = "conversation.exported", "Conversation exported by its owner"
    # Administration (mirrors Django's admin log)
    ADMIN_ADD = "admin.add", "Added in the console"
    ADMIN_CHANGE = "admin.change", "Changed in the console"
    ADMIN_DELETE = "admin.delete", "Deleted in the console"
    # Compliance
    LEGAL_HOLD_SET = "legal_hold.set", "Legal hold placed"
    LEGAL_HOLD_RELEASED = "legal_hold.released", "Legal hold released"
    RETENTION_APPLIED = "retention.applied", "Retention policy applied (counts, per run)"
    PERSON_ERASED = "person.erased", "Person erased (privacy request)"
    PERSON_ERASE_REFUSED = "person.erase_refused", "Erasure refused (legal hold)"
    AUDIT_EXPORTED = "audit.exported", "Audit trail exported"
    CHAIN_VERIFIED = "audit.chain_verified", "Audit chain verified"
    ENCRYPTION_KEYS_ROTATED = "encryption.keys_rotated", "Encryption keys rotated"
    BULK_WRITE = "data.bulk_write", "Governed records written in bulk (queryset write)"
    # Costs
    BUDGET_REFUSED = "budget.refused", "Request refused by a budget"
    BUDGET_ALERT = "budget.alert", "Alert-only budget exceeded"
    BUDGET_WARNING = "budget.warning", "Budget warning threshold crossed"
    # Guardrails
    PII_DETECTED = "guardrail.pii_detected", "Personal data or secrets detected"
    PII_BLOCKED = "guardrail.pii_blocked", "Message refused: personal data or secrets"
    INJECTION_FLAGGED = "guardrail.injection_flagged", "Possible prompt injection flagged"
    INJECTION_BLOCKED = "guardrail.injection_blocked", "Prompt injection refused or withheld"
    # API keys
    API_KEY_CREATED = "api_key.created", "API key created"
    API_KEY_REVOKED = "api_key.revoked", "API key revoked"
    API_KEY_REFUSED = "api_key.refused", "API key refused"
    API_KEY_EXPIRED = "api_key.expired", "API key expired"
    # Preferences
    PREFERENCES_CHANGED = (
        "preferences.changed",
        "Personal preferences changed (custom instructions)",
    )
    ADMIN_PASSWORD_RESET = (
        "auth.admin_password_reset",
        "Local administrator password reset (command)",
    )
    # Later features record through the same hook: add their actions here.
    TOOL_REFUSED = "tool.refused", "Tool call refused"


class AuditOutcome(models.TextChoices):
    SUCCESS = "success", "Success"
    DENIED = "denied", "Denied"
    FAILED = "failed", "Failed"


class TargetType(models.TextChoices):
    """What an event is about. The target id is the object's public id (or pk for admin)."""

    USER = "user", "User"
    CONVERSATION = "conversation", "Conversation"
    MESSAGE = "message", "Message"
    MODEL = "aimodel", "AI model"
    GROUP = "group", "Group"
    BUDGET = "budget", "Budget"
    PRICE = "modelprice", "Model price"
    AUDIT_EVENT = "auditevent", "Audit event"
    AUDIT_TRAIL = "audit_trail", "Audit trail"
    SOCKET = "socket", "Chat socket"
    API_KEY = "api_key", "API key"
    RETENTION_POLICY = "retention_policy", "Retention policy"
    OTHER = "other", "Other"
