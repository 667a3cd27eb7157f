"""Layers point one way (docs/architecture.md): the queue API does not reach back into the
workflow model, the backend protocol does not reach the API, and the backends store without
checking run-secrets (the queue API does). Read from the source's imports, every import
counted (at the top, inside functions, for type checking only)."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "caliber"


def _module(path: Path) -> str:
    name = ".".join(path.relative_to(SRC).with_suffix("").parts)
    return name.removesuffix(".__init__")


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}


def _known(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    """The caliber modules ``module`` imports, and the names it takes from each (as
    ``module:name``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("caliber"):
            assert node.module is not None
            for alias in node.names:
                target = _known(f"{node.module}.{alias.name}")
                if target and target not in ("caliber", module):
                    found.add(target)
                    found.add(f"{target}:{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name) if alias.name.startswith("caliber") else None
                if target and target not in ("caliber", module):
                    found.add(target)
    return found


def path(start: str, end: str) -> list[str] | None:
    """A chain of imports from ``start`` to ``end``, or None."""
    came: dict[str, str | None] = {start: None}
    todo = deque([start])
    while todo:
        here = todo.popleft()
        if here == end:
            chain = [end]
            while (back := came[chain[-1]]) is not None:
                chain.append(back)
            return chain[::-1]
        for there in sorted(m for m in imports(here) if ":" not in m):
            if there not in came:
                came[there] = here
                todo.append(there)
    return None


def test_the_queue_api_does_not_reach_the_workflow_model() -> None:
    """workflow/model -> queue/api only: ``Workflow.queue``/``run`` are thin methods over the
    API layer, which takes any :class:`caliber.queue.api.Queueable`."""
    for api in ("caliber.queue.api", "caliber.results.api", "caliber.results.prune"):
        assert path(api, "caliber.workflow.model") is None, path(api, "caliber.workflow.model")


def test_the_backend_protocol_does_not_reach_the_api() -> None:
    """The circle queue/api -> registry -> backend -> results/prune -> queue/api is gone:
    ``Pruned`` lives in a module that imports nothing of Caliber."""
    assert path("caliber.queue.backend", "caliber.queue.api") is None
    assert path("caliber.queue.backend", "caliber.results.prune") is None
    assert {m for m in imports("caliber.results.pruned") if ":" not in m} == set()


def test_backends_check_no_run_secret() -> None:
    """The backends store; :func:`caliber.queue.api.check_summary` and the pinion verify."""
    backends = [m for m in MODULES if m.startswith(("caliber.queue.sqlite",
                                                    "caliber.queue.speckle",
                                                    "caliber.queue.memory",
                                                    "caliber.queue.postgres",
                                                    "caliber.queue.sql"))]
    assert "caliber.queue.memory.backend" in backends
    for module in backends:
        taken = imports(module)
        for verb in ("verify", "verify_raw", "load_key", "resume_ok"):
            assert f"caliber.queue.secret:{verb}" not in taken, (module, verb)


def test_each_backend_selects_itself_from_a_light_module() -> None:
    """Every registered kind has ``select`` (importing neither pydantic nor a driver at its
    top) and ``SCHEMES``; the registry has no rule of any one backend."""
    from importlib import import_module

    from caliber.queue.registry import BACKENDS

    for kind, package in BACKENDS.items():
        light = import_module(package + ".select")
        assert callable(light.select) and light.SCHEMES, kind
        top = ast.parse(MODULES[package + ".select"].read_text(encoding="utf-8")).body
        heavy = [n for n in top if isinstance(n, ast.Import | ast.ImportFrom)
                 and any(word in ast.dump(n) for word in
                         ("pydantic", "specklepy", "psycopg", ".backend", "settings_model"))]
        assert heavy == [], kind
    target_source = MODULES["caliber.queue.target"].read_text(encoding="utf-8")
    for word in ("speckle", "sqlite:", "postgres", "load_remote_settings"):
        assert word not in target_source.split("def resolve_target")[1], word
