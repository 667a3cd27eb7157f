"""A second script: read back the latest results of the pasta workflow.

Run ``caliber workflow run pasta.json`` first (or ``make demo`` in the repository).
"""

from __future__ import annotations

import caliber


def main() -> None:
    results = caliber.get_results(workflow="pasta")
    print(f"results {results.id}: {results.status.value}")
    print("dough:", results["Make dough"])
    print("pasta:", results["Roll and shape"])
    print("log in g:", results.g.get("log"))


if __name__ == "__main__":
    main()
