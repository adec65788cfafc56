"""The accessibility check: axe-core (bundled in axe-playwright-python, nothing downloaded at
run time) on the page as it is now; fails on serious or critical violations.

    from tests.e2e.axe import assert_no_serious_violations
    assert_no_serious_violations(page)

Minor and moderate findings are returned (not failed on) so a test may look at them.
"""

from __future__ import annotations

from typing import Any

FAILING_IMPACTS = frozenset({"serious", "critical"})
# WCAG 2.x A and AA rules plus axe's best practices; experimental rules are left out.
RUN_OPTIONS = {
    "resultTypes": ["violations"],
    "runOnly": {
        "type": "tag",
        "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"],
    },
}


def axe_violations(page: Any, context: str | None = None) -> list[dict[str, Any]]:
    """Every axe violation on `page` (optionally only within the CSS selector `context`)."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, context=context, options=RUN_OPTIONS)
    return list(results.response["violations"])


def describe(violations: list[dict[str, Any]]) -> str:
    """A readable list: rule, impact, what it means, and each offending element."""
    lines = []
    for violation in violations:
        lines.append(
            f"- {violation['id']} ({violation['impact']}): {violation['help']} "
            f"<{violation['helpUrl']}>"
        )
        for node in violation["nodes"]:
            target = " ".join(str(part) for part in node["target"])
            summary = (node.get("failureSummary") or "").replace("\n", " ")
            lines.append(f"    {target}: {node['html'][:160]}")
            if summary:
                lines.append(f"      {summary[:300]}")
    return "\n".join(lines)


def assert_no_serious_violations(page: Any, context: str | None = None) -> list[dict[str, Any]]:
    """Fail with a readable list if axe finds serious or critical violations on `page`;
    return the lesser ones."""
    violations = axe_violations(page, context)
    failing = [v for v in violations if v.get("impact") in FAILING_IMPACTS]
    assert not failing, f"accessibility violations on {page.url}:\n{describe(failing)}"
    return [v for v in violations if v.get("impact") not in FAILING_IMPACTS]
