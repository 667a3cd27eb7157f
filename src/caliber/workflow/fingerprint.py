"""Fingerprints a resumed run compares to decide whether a task may be reused.

A task's **code fingerprint** is the SHA-256 of the normalised source of its function and of
everything that function reaches in the workflow's own modules (the Python files in the
workflow's folder, that is its attached modules: not the standard library, not installed
packages): the functions and classes it uses, the module-level names it reads (the
statements that set them), what it imports from the other modules of the folder, followed
through transitively. Normalised means parsed and written back (:func:`ast.unparse`) with
docstrings left out: comments, blank lines, formatting and docstrings do not count; a change
anywhere else in the file does not either.

What is reached is found in the source, by name: a name the code mentions that the module
binds at its top level (a ``def``, a ``class``, an assignment, an import) is followed; so is
``helpers.area`` when ``helpers`` is an imported module of the folder. A module of the folder
used as a whole (``getattr(helpers, name)``, passed along) counts with all its statements.
Followed by name, a local variable that has the name of a module-level one counts that one
too: more tasks may run again than strictly needed, never fewer. Code reached only through a
string (``globals()["f"]``, ``importlib.import_module``) is not followed; nor is the code of
installed packages (a task function that lives in one counts by its import path alone).

A task's **inputs fingerprint** is one SHA-256 per argument (the arguments as stored, a
``task.result`` reference as its marker ``{"$result": name}``): which argument changed can be
told. The values of references are compared through the rule that the task they come from
was reused (its stored value is then the one this task was given). An upstream workload's
result (``{"$results": ...}``) counts as its marker with the value it gave as stored in the
upstream's Results (a big array by its SHA-256): an upstream run again with another value
makes the task run again.

No pydantic, no threading: a pinion's child computes these (:mod:`caliber.pinion.child`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from caliber.results.convert import to_json
from caliber.workflow.model import TaskRef, UpstreamResult

FORMAT = "caliber code/1"
"""Written first in what a code fingerprint hashes: a new way of fingerprinting is a change."""
_PACKAGE_DIRS = ("site-packages", "dist-packages")


@dataclass
class _Module:
    """A module of the workflow's folder, parsed: its top-level statements (docstrings
    dropped) and which of them bind each name."""

    name: str
    package: str
    statements: list[ast.stmt]
    binds: dict[str, list[int]] = field(default_factory=dict)
    imports: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    """Name -> (module, attribute or None for the module itself), per import binding it."""
    star: list[str] = field(default_factory=list)
    """Modules imported with ``from X import *``."""
    texts: dict[int, tuple[str, set[tuple[str, ...]]]] = field(default_factory=dict)
    """Statement -> its normalised text and the names it mentions (made when first needed)."""


class Fingerprinter:
    """Code fingerprints of task functions, for one run (modules parsed once)."""

    def __init__(self, base_dir: str) -> None:
        self.base = os.path.abspath(base_dir).rstrip(os.sep) + os.sep
        self.modules: dict[str, _Module | None] = {}
        self.done: dict[str, str | None] = {}

    def own_file(self, module: str) -> str | None:
        """The source file of ``module`` when it is one of the workflow's own (a ``.py`` file
        in its folder, not in an installed package's folder there), else None."""
        found = getattr(sys.modules.get(module), "__file__", None)
        if not isinstance(found, str) or not found.endswith(".py"):
            return None
        path = os.path.abspath(found)
        if not path.startswith(self.base):
            return None
        inside = path[len(self.base):].split(os.sep)
        return None if any(part in _PACKAGE_DIRS for part in inside) else path

    def code(self, function: str) -> str | None:
        """The code fingerprint of the task function ``module:qualname`` (hex), or None when
        its module's source cannot be read (nothing of it can then be reused)."""
        if function not in self.done:
            self.done[function] = self._code(function)
        return self.done[function]

    def _code(self, function: str) -> str | None:
        module, _, qualname = function.partition(":")
        if self.own_file(module) is None:  # an installed package's function: its path alone
            return _digest([FORMAT, f"external {function}"])
        parts: set[str] = set()
        seen: set[tuple[str, ...]] = set()
        todo: list[tuple[str, ...]] = [("name", module, qualname.partition(".")[0])]
        while todo:
            item = todo.pop()
            if item in seen:
                continue
            seen.add(item)
            if not self._follow(item, parts, todo):
                return None
        return _digest([FORMAT, *sorted(parts)])

    def _follow(self, item: tuple[str, ...], parts: set[str],
                todo: list[tuple[str, ...]]) -> bool:
        """Add what ``item`` stands for to ``parts`` and what it reaches to ``todo``; False
        when a module of the folder cannot be read."""
        kind, module = item[0], item[1]
        parsed = self._module(module)
        if parsed is None:
            return False
        if kind == "module":  # used as a whole
            for index in range(len(parsed.statements)):
                self._statement(parsed, index, parts, todo)
            for name in parsed.imports:
                self._imported(parsed, name, (), parts, todo)
            return True
        name, rest = item[2], item[3:]
        for index in parsed.binds.get(name, ()):
            self._statement(parsed, index, parts, todo)
        if name in parsed.imports:
            self._imported(parsed, name, rest, parts, todo)
        elif not parsed.binds.get(name):
            for other in parsed.star:
                if self.own_file(other) is not None:
                    todo.append(("name", other, name, *rest))
        return True

    def _statement(self, parsed: _Module, index: int, parts: set[str],
                   todo: list[tuple[str, ...]]) -> None:
        if index not in parsed.texts:
            statement = parsed.statements[index]
            _drop_docstrings(statement)
            parsed.texts[index] = ast.unparse(statement), _names(statement)
        text, names = parsed.texts[index]
        parts.add(f"{parsed.name}\0{text}")
        for path in names:
            todo.append(("name", parsed.name, *path))

    def _imported(self, parsed: _Module, name: str, rest: tuple[str, ...], parts: set[str],
                  todo: list[tuple[str, ...]]) -> None:
        """Follow ``name`` (and the attributes ``rest`` read on it) where its imports lead."""
        for target, attribute in parsed.imports[name]:
            if attribute is not None and f"{target}.{attribute}" in sys.modules:
                target, attribute = f"{target}.{attribute}", None  # a submodule
            shown = target if attribute is None else f"{target}:{attribute}"
            own = self.own_file(target) is not None
            parts.add(f"{parsed.name}\0{name} -> {'' if own else 'external '}{shown}")
            if not own:
                continue
            if attribute is not None:
                todo.append(("name", target, attribute, *rest))
                continue
            module = target  # a module of the folder: follow the attributes read on it
            for i, step in enumerate(rest):
                if f"{module}.{step}" in sys.modules and self.own_file(f"{module}.{step}"):
                    module = f"{module}.{step}"
                    continue
                todo.append(("name", module, step, *rest[i + 1:]))
                break
            else:
                todo.append(("module", module))

    def _module(self, name: str) -> _Module | None:
        if name not in self.modules:
            self.modules[name] = self._parse(name)
        return self.modules[name]

    def _parse(self, name: str) -> _Module | None:
        path = self.own_file(name)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                tree = ast.parse(f.read(), filename=path)
        except (OSError, SyntaxError, ValueError):
            return None
        package = getattr(sys.modules.get(name), "__package__", None) or ""
        parsed = _Module(name, package, tree.body)
        for index, statement in enumerate(tree.body):
            for bound in _bound(statement, parsed):
                parsed.binds.setdefault(bound, []).append(index)
        return parsed


def _bound(statement: ast.stmt, parsed: _Module) -> list[str]:
    """The names a top-level statement binds (imports recorded in ``parsed`` instead): a
    ``def`` or ``class`` its name; an assignment its targets (``X[k] = ...`` and
    ``X.a = ...`` change ``X``); any other statement (``X.update(...)``, an ``if`` block)
    every name it mentions, as it may change any of them."""
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [statement.name]
    if isinstance(statement, ast.Import):
        for alias in statement.names:
            if alias.asname is not None:
                parsed.imports.setdefault(alias.asname, []).append((alias.name, None))
            else:
                top = alias.name.partition(".")[0]
                parsed.imports.setdefault(top, []).append((top, None))
        return []
    if isinstance(statement, ast.ImportFrom):
        try:
            source = importlib.util.resolve_name("." * statement.level + (statement.module or ""),
                                                 parsed.package) if statement.level else (
                statement.module or "")
        except (ImportError, ValueError):
            source = f"?{statement.module}"
        for alias in statement.names:
            if alias.name == "*":
                parsed.star.append(source)
            else:
                parsed.imports.setdefault(alias.asname or alias.name, []).append(
                    (source, alias.name))
        return []
    if isinstance(statement, ast.Assign | ast.AnnAssign | ast.AugAssign):
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        found = []
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, ast.Name):
                    found.append(node.id)
        return found
    return [node.id for node in ast.walk(statement) if isinstance(node, ast.Name)]


def _names(statement: ast.stmt) -> set[tuple[str, ...]]:
    """Every name a statement mentions, each with the attributes read on it
    (``helpers.mesh.area`` -> ``("helpers", "mesh", "area")``)."""
    found: set[tuple[str, ...]] = set()
    inner: set[int] = set()
    for node in ast.walk(statement):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain: list[str] = []
            value: ast.expr = node
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                inner.add(id(value))
                value = value.value
            if isinstance(value, ast.Name):
                inner.add(id(value))
                found.add((value.id, *reversed(chain)))
        elif isinstance(node, ast.Name) and id(node) not in inner:
            found.add((node.id,))
    return found


def _drop_docstrings(statement: ast.stmt) -> None:
    """Drop the docstrings of the functions and classes in ``statement`` (looking only at
    statements: a docstring is never inside an expression)."""
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        body = statement.body
        if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            statement.body = body[1:] or [ast.Pass()]
    for name in ("body", "orelse", "finalbody", "handlers", "cases"):
        for inner in getattr(statement, name, ()):
            if isinstance(inner, ast.stmt):
                _drop_docstrings(inner)
            else:  # an except handler or a match case: their statements
                for deeper in getattr(inner, "body", ()):
                    _drop_docstrings(deeper)


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8", "backslashreplace")).hexdigest()


# --- inputs ------------------------------------------------------------------------------

def _marked(value: Any, upstream: Mapping[UpstreamResult, Any]) -> Any:
    """An argument with every ``task.result`` reference as its marker, and every upstream
    result as its marker with the value it stands for as stored."""
    if isinstance(value, TaskRef):
        return {"$result": value.task}
    if isinstance(value, UpstreamResult):
        given = upstream.get(value)
        return {"$results": value.fields(),
                "stored": None if given is None else getattr(given, "stored", None)}
    if isinstance(value, list | tuple):
        return [_marked(v, upstream) for v in value]
    if isinstance(value, dict):
        return {k: _marked(v, upstream) for k, v in value.items()}
    return value


def _value_digest(value: Any, upstream: Mapping[UpstreamResult, Any]) -> str:
    data = json.dumps(to_json(_marked(value, upstream))[0], sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(data.encode("utf-8", "backslashreplace")).hexdigest()


def inputs(args: list[Any], kwargs: dict[str, Any],
           upstream: Mapping[UpstreamResult, Any] | None = None) -> list[str]:
    """The inputs fingerprint: a SHA-256 per positional argument, then ``name=SHA-256`` per
    keyword argument, sorted by name. ``upstream``: the upstream results the arguments take
    (:class:`~caliber.workflow.upstream.UpstreamValue` by reference): an argument that takes
    one counts with the value as stored (a big array by its SHA-256), so a resume reuses
    the task only when the upstream value is the one it took."""
    given = upstream or {}
    return ([_value_digest(a, given) for a in args]
            + sorted(f"{k}={_value_digest(v, given)}" for k, v in kwargs.items()))


def inputs_change(before: list[str], now: list[str]) -> str | None:
    """Which argument differs between two inputs fingerprints (``argument 2 changed``,
    ``argument 'tol' changed``), or None when they are equal."""
    if before == now:
        return None
    old_pos = [x for x in before if "=" not in x]
    new_pos = [x for x in now if "=" not in x]
    for i, (a, b) in enumerate(zip(old_pos, new_pos, strict=False)):
        if a != b:
            return f"argument {i + 1} changed"
    if len(old_pos) != len(new_pos):
        return f"arguments changed ({len(new_pos)} now, {len(old_pos)} before)"
    old_kw = dict(x.split("=", 1) for x in before if "=" in x)
    new_kw = dict(x.split("=", 1) for x in now if "=" in x)
    for name in sorted(old_kw.keys() | new_kw.keys()):
        if old_kw.get(name) != new_kw.get(name):
            return f"argument {name!r} changed"
    return "arguments changed"
