"""The task functions of the pasta example: small, deterministic and quick.

Each is a plain module-level function, so a workflow file can name it as
``pasta_functions:make_dough``. They pass the dough along in Caliber's global data object
``g`` (fresh for every run, kept in the Results at the end) and return what they made.
"""

from __future__ import annotations

from caliber.context import g

FLOUR_PER_EGG = 100  # grams of flour per egg, the classic ratio
GRAMS_PER_PORTION = {"tagliatelle": 100, "ravioli": 125, "pappardelle": 110}


def make_dough(eggs: int) -> dict[str, int]:
    """Mix flour and eggs; the dough goes into ``g.dough`` for the next tasks."""
    if eggs < 1:
        raise ValueError(f"cannot make dough with {eggs} eggs")
    dough = {"eggs": eggs, "flour_g": eggs * FLOUR_PER_EGG, "weight_g": eggs * 155}
    g.dough = dough
    g.setdefault("log", []).append(f"dough of {eggs} eggs")
    return dough


def rest(minutes: int = 30) -> str:
    """Let the dough in ``g`` rest (no waiting here: this is an example)."""
    g.dough["rested_min"] = minutes
    g.log.append(f"rested {minutes} min")
    return f"rested {minutes} min"


def roll_and_shape(pasta_type: str = "tagliatelle") -> dict[str, object]:
    """Roll the rested dough out and cut it; returns the pasta made."""
    dough = g.dough
    if "rested_min" not in dough:
        raise RuntimeError("the dough has not rested")
    if pasta_type not in GRAMS_PER_PORTION:
        known = ", ".join(sorted(GRAMS_PER_PORTION))
        raise ValueError(f"unknown pasta type {pasta_type!r}; try one of: {known}")
    portions = dough["weight_g"] // GRAMS_PER_PORTION[pasta_type]
    g.log.append(f"{portions} portions of {pasta_type}")
    return {"pasta_type": pasta_type, "portions": portions, "weight_g": dough["weight_g"]}


def serve(batches: list[dict[str, object]]) -> int:
    """Count the portions of every batch (the returns of the branches)."""
    return sum(int(str(batch["portions"])) for batch in batches)
