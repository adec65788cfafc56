"""docs/security.md names, for every threat, the test that proves its control: those tests exist.

A renamed or deleted test would otherwise leave the threat model claiming a proof that is gone.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
REFERENCE = re.compile(r"([\w/]+\.py)::(\w+)")


def threat_model_rows() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Threat model", 1)[1].split("\n## ", 1)[0]
    return [
        line
        for line in section.splitlines()
        if line.startswith("| ")
        and not line.startswith("| asset")
        and not re.match(r"\|\s*-", line)
    ]


def functions_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def test_every_threat_names_a_test_that_exists() -> None:
    rows = threat_model_rows()
    assert len(rows) > 40
    missing: list[str] = []
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 4, f"a threat-model row needs four cells: {row}"
        references = REFERENCE.findall(cells[3])
        assert references, f"no test named for: {cells[1]}"
        for path, name in references:
            if not (ROOT / path).is_file() or name not in functions_in(ROOT / path):
                missing.append(f"{path}::{name}")
    assert missing == [], "docs/security.md names tests that do not exist"
