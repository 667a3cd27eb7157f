"""Every `pip install` line in the README, docs/ and Caliber's own messages works as written.

caliber-workflows is not on a package index: it is installed from the clone (``.``), from a
wheel that `make dist` built (``caliber_workflows-VERSION-py3-none-any.whl``), and specklepy on
its own takes the range of the ``speckle`` extra.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from caliber.queue.speckle.adapter import INSTALL_HINT

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXTRAS = set(PROJECT["optional-dependencies"])
(SPECKLEPY,) = PROJECT["optional-dependencies"]["speckle"]
WHEEL = f"caliber_workflows-{PROJECT['version']}-py3-none-any.whl"


def pip_installs(text: str) -> list[str]:
    """What follows each ``pip install`` (options skipped, quotes removed), lines joined."""
    text = " ".join(text.split())
    found = re.findall(r"pip install\s+(?:-{1,2}[\w-]+\s+)*('[^']*'|[^\s`'\"]+)", text)
    return [target.strip("'") for target in found]


def works(target: str) -> bool:
    name, _, extras = target.partition("[")
    extras_ok = not extras or set(extras.rstrip("]").split(",")) <= EXTRAS
    return extras_ok and (name in (".", WHEEL) or target == SPECKLEPY)


def test_every_install_line_works() -> None:
    sources = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
               *sorted((REPO / "examples").glob("*/README.md"))]
    seen = {}
    for source in sources:
        for target in pip_installs(source.read_text(encoding="utf-8")):
            seen[f"{source.relative_to(REPO)}: pip install {target}"] = works(target)
    assert [line for line, ok in seen.items() if not ok] == []
    assert len(seen) >= 5  # the README's ways and the remote queue guide's


def test_the_missing_specklepy_message_installs_it() -> None:
    assert pip_installs(INSTALL_HINT) == [SPECKLEPY]


def test_the_checker_refuses_a_name_that_is_not_published() -> None:
    assert pip_installs("run `pip install\n'caliber-workflows[speckle]'` first") == [
        "caliber-workflows[speckle]"]
    assert not works("caliber-workflows[speckle]")
    assert not works("specklepy")  # without the extra's range
    assert not works(".[nope]")
    assert works(f"{WHEEL}[speckle]") and works(".[dev,speckle]")
