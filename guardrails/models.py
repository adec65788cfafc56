"""The organisation's guardrail policy: one row, edited in the console by administrators."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from audit.governed import GovernedManager
from guardrails import dlp


class DlpMode(models.TextChoices):
    OFF = "off", "Off"
    FLAG = "flag", "Flag (send unchanged, record in the audit trail)"
    REDACT = "redact", "Redact (the model sees placeholders, the transcript keeps the text)"
    BLOCK = "block", "Block (refuse the message)"


class InjectionMode(models.TextChoices):
    OFF = "off", "Off"
    FLAG = "flag", "Flag (let through, record in the audit trail)"
    BLOCK = "block", "Block (refuse a message; withhold a tool result)"


def default_detectors() -> list[str]:
    return list(dlp.DETECTORS)


def default_national_ids() -> list[str]:
    return list(dlp.NATIONAL_IDS)


class GuardrailPolicy(models.Model):
    """What the guardrails do with every message and tool result. One per organisation
    (the deployment): always row 1, read through `GuardrailPolicy.current()`."""

    SINGLETON_ID = 1

    dlp_mode = models.CharField(
        "personal data and secrets", max_length=8, choices=DlpMode.choices, default=DlpMode.FLAG
    )
    detectors = models.JSONField(
        default=default_detectors, help_text="Which kinds of data the DLP detectors look for."
    )
    national_ids = models.JSONField(
        "national identity numbers",
        default=default_national_ids,
        help_text="Which national id formats the national id detector looks for.",
    )
    injection_mode_input = models.CharField(
        "prompt injection in messages",
        max_length=8,
        choices=InjectionMode.choices,
        default=InjectionMode.FLAG,
    )
    injection_mode_tools = models.CharField(
        "prompt injection in tool results",
        max_length=8,
        choices=InjectionMode.choices,
        default=InjectionMode.FLAG,
    )
    injection_threshold = models.DecimalField(
        "injection score threshold",
        max_digits=3,
        decimal_places=2,
        default=0.5,
        help_text="0.05–1.00. A text scoring this or more is treated as an injection "
        "(see docs/guardrails.md for the rules and their weights).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    # Queryset writes are audited unless a service that audits them says so (audit.governed).
    objects = GovernedManager()

    class Meta:
        verbose_name = "guardrail policy"
        verbose_name_plural = "guardrail policy"
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="guardrails_policy_single_row"),
            models.CheckConstraint(
                condition=models.Q(dlp_mode__in=DlpMode.values), name="guardrails_dlp_mode_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(injection_mode_input__in=InjectionMode.values)
                & models.Q(injection_mode_tools__in=InjectionMode.values),
                name="guardrails_injection_modes_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(injection_threshold__gte=0.05)
                & models.Q(injection_threshold__lte=1),
                name="guardrails_threshold_range",
            ),
        ]

    def __str__(self) -> str:
        return "Guardrail policy"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.pk = self.SINGLETON_ID
        super().save(*args, **kwargs)

    @classmethod
    def current(cls) -> GuardrailPolicy:
        """The policy, created with the defaults on first use. Read fresh on every call, so
        a change in the console applies to the next message (one primary-key read)."""
        policy, _ = cls.objects.get_or_create(pk=cls.SINGLETON_ID)
        return policy

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.dlp_mode not in DlpMode.values:
            errors["dlp_mode"] = "Choose off, flag, redact or block."
        for name in ("injection_mode_input", "injection_mode_tools"):
            if getattr(self, name) not in InjectionMode.values:
                errors[name] = "Choose off, flag or block."
        for name, known in (("detectors", dlp.DETECTORS), ("national_ids", dlp.NATIONAL_IDS)):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                errors[name] = "A list of names."
            elif unknown := sorted(set(value) - set(known)):
                errors[name] = f"Unknown: {', '.join(unknown)}. Known: {', '.join(known)}."
        if self.dlp_mode != DlpMode.OFF and not self.detectors and "detectors" not in errors:
            errors["detectors"] = "Enable at least one detector, or turn the DLP mode off."
        threshold = self.injection_threshold
        if threshold is None or not 0.05 <= float(threshold) <= 1:
            errors["injection_threshold"] = "A score between 0.05 and 1.00."
        if errors:
            raise ValidationError(errors)

    # The screening code reads these.
    @property
    def dlp_active(self) -> bool:
        return self.dlp_mode != DlpMode.OFF and bool(self.detectors)

    @property
    def redacts_for_provider(self) -> bool:
        """Whether provider requests get placeholders (redact, and block as its backstop)."""
        return self.dlp_mode in {DlpMode.REDACT, DlpMode.BLOCK} and bool(self.detectors)
