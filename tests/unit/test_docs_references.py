"""The docs' references follow the code: every file path they name exists, and every
constant of docs/architecture.md §8 is defined in the module its row names.

Files move (docs/architecture.md §1 is the map); a page that still names the old place
sends a reader nowhere, so the suite fails instead.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(
    r"\b(?:server|models|actions|queues|clients|tests|bench|migrations)/[\w/]+\.(?:py|json|js)\b"
)
# A row of the constants table: | `NAME`, `NAME` | value | `module.py` | why |
CONSTANT_ROW = re.compile(r"^\| ((?:`\w+`(?:, |/| and )?)+) \| [^|]* \| `([\w/]+\.py)` \|", re.M)


def test_every_file_the_docs_name_exists() -> None:
    missing = [
        f"{page.name}: {path}"
        for page in PAGES
        for path in sorted(set(PATH.findall(page.read_text())))
        if not (ROOT / path).exists()
    ]
    assert missing == []


def test_every_constant_is_defined_where_the_table_says() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## 8. Limits and constants") : text.index("## 9.")]
    rows = CONSTANT_ROW.findall(section)
    assert len(rows) > 40, "the table was not read"
    missing = []
    for names, module in rows:
        source = (ROOT / module).read_text()
        for name in re.findall(r"`(\w+)`", names):
            if not re.search(
                rf"^\s*{name}\b\s*(?::[^=\n]+)?=|^(?:async )?def {name}\b", source, re.M
            ):
                missing.append(f"{name} in {module}")
    assert missing == []
