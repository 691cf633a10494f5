#!/usr/bin/env python
"""Write the README's architecture and loss tables from the registries in the code.

    python scripts/registry_tables.py          # rewrite the tables in README.md
    python scripts/registry_tables.py --check  # exit 1 when README.md is stale (the tests do the same)

The tables sit between ``<!-- registry:NAME -->`` and ``<!-- /registry:NAME -->`` markers; nothing
else in the README is touched.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def architecture_table() -> str:
    from schism_napari.models import ARCHITECTURES

    rows = ["| `model_type` | from | [Model] keys it reads besides `num_classes`, `in_channels` |", "|---|---|---|"]
    for name, architecture in ARCHITECTURES.items():
        keys = ", ".join(f"`{k}`" for k in architecture.keys) or "none"
        rows.append(f"| {name} | {architecture.origin} | {keys} |")
    return "\n".join(rows)


def loss_table() -> str:
    from schism_napari.training.losses import LOSS_TERMS

    rows = ["| `loss` | from | other [Loss] keys it takes |", "|---|---|---|"]
    for name, term in LOSS_TERMS.items():
        keys = ", ".join(f"`{k}`" for k in sorted(term.keywords())) or "none"
        rows.append(f"| {name} | {term.origin} | {keys} |")
    return "\n".join(rows)


TABLES = {"architectures": architecture_table, "losses": loss_table}


def render(text: str) -> str:
    """``text`` with every marked table regenerated; a missing marker is an error."""
    for name, make in TABLES.items():
        pattern = re.compile(rf"(<!-- registry:{name} -->\n).*?(<!-- /registry:{name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"README.md: marker <!-- registry:{name} --> ... <!-- /registry:{name} --> not found")
        table = make()
        text = pattern.sub(lambda m, table=table: m.group(1) + table + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when README.md is stale")
    arguments = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    fresh = render(current)
    if arguments.check:
        if fresh != current:
            print("README.md: registry tables are stale; run python scripts/registry_tables.py", file=sys.stderr)
            return 1
        return 0
    if fresh != current:
        README.write_text(fresh, encoding="utf-8")
        print("README.md: registry tables updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
