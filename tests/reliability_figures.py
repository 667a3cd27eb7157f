"""Figures the reliability tests measure, for docs/reliability.md.

Every fault, fuzz, disk and security test calls :func:`record` with what it tried and what it
found. The figures are printed (``pytest -s`` shows them) and, when ``CALIBER_TEST_FIGURES``
names a file, appended to it as JSON lines; ``tests/reliability_report.py`` runs the suite that
way and writes the figures into docs/reliability.md.
"""

from __future__ import annotations

import json
import os
from typing import Any

FIGURES_ENV = "CALIBER_TEST_FIGURES"


def record(test: str, **figures: Any) -> None:
    line = json.dumps({"test": test, **figures}, sort_keys=True)
    print(f"figures: {line}")
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
