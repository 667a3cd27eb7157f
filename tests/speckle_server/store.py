"""The server's state (users, projects, models, versions, objects) and its rules.

Every rule and error here follows the real speckle-server's code (modules/core/services and
repositories, named where used) and the traffic recorded from it
(tests/data/speckle-transcripts). The HTTP layer holds ``Store.lock`` around each request, so
the methods need no locking of their own. The store outlives the HTTP server: stopping and starting
the server keeps the data.
"""

from __future__ import annotations

import bisect
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from graphql import GraphQLError

NAME_RULES = (
    'Model names cannot start with "#", "$", start or end with "/", have multiple slashes next'
    ' to each other (e.g., "//") or contain commas or backwards slashes.'
)
NO_ACCESS = "You do not have access to the project"
MAX_VERSIONS_PAGE = 100


class SpeckleError(GraphQLError):
    """A GraphQL error shaped like the real server's: ``extensions`` = code, info, statusCode."""

    def __init__(self, text: str, code: str, status: int, /, **info: Any) -> None:
        super().__init__(text, extensions={"code": code, **info, "statusCode": status})


@dataclass
class User:
    id: str
    name: str
    email: str
    company: str | None
    role: str  # "server:admin" for the first user, as on a fresh real server


@dataclass
class Project:
    id: str
    name: str
    description: str
    visibility: str
    owner_id: str
    created_at: str
    updated_at: str
    allow_public_comments: bool = False


@dataclass
class Model:
    id: str
    project_id: str
    name: str
    description: str | None
    author_id: str
    created_at: str
    updated_at: str


@dataclass
class Version:
    id: str
    project_id: str
    model_id: str
    object_id: str
    message: str | None
    source_application: str | None
    author_id: str
    created_at: str


def format_stamp(at: datetime) -> str:
    """A UTC time as the real server's ``toISOString()`` writes it: milliseconds, ``Z``."""
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def model_name(raw: str) -> str:
    """Lower-case, split on ``/``, trim the parts, drop empty ones (``/A//B `` -> ``a/b``)."""
    return "/".join(part.strip() for part in raw.lower().split("/") if part.strip())


def name_is_valid(name: str) -> bool:
    """The real server's rule: no ``#``/``$``/``/`` start, ``/`` end, ``//``, ``,`` or ``\\``."""
    return re.match(r"[#$/]|.*(/$|//|[,\\])", name, re.DOTALL) is None


def ilike(value: str, pattern: str) -> bool:
    """SQL ``value ILIKE pattern``: ``%`` and ``_`` are wildcards, ``\\`` escapes."""
    regex, chars = "", iter(pattern)
    for char in chars:
        if char == "\\":
            regex += re.escape(next(chars, ""))
        else:
            regex += {"%": ".*", "_": "."}.get(char) or re.escape(char)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL) is not None


def has_scope(scopes: frozenset[str], scope: str) -> bool:
    """``validateScopes`` (modules/shared/services/auth.ts): the scope itself, or ``*``."""
    return scope in scopes or "*" in scopes


@dataclass
class Store:
    """All data of one test server. ``objects`` maps project id -> object id -> object."""

    users: dict[str, User] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> user id
    scopes: dict[str, frozenset[str]] = field(default_factory=dict)  # token -> its scopes
    projects: dict[str, Project] = field(default_factory=dict)
    models: dict[str, Model] = field(default_factory=dict)
    versions: dict[str, Version] = field(default_factory=dict)
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    by_model: dict[str, list[tuple[str, str]]] = field(default_factory=dict, repr=False)
    """Model id -> its versions' ``(createdAt, id)``, oldest first: what the real server's
    ``branch_commits`` primary key ``(branchId, commitId)`` finds and its query sorts by
    ``createdAt``; kept in order on every change, so a page is a bisection."""
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _last_stamp: datetime = field(default=datetime.min.replace(tzinfo=UTC), repr=False)

    # -- helpers -------------------------------------------------------------------------------

    def stamp(self) -> str:
        """Now as the server writes it (ms precision, ``Z``), strictly increasing."""
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        self._last_stamp = max(now, self._last_stamp + timedelta(milliseconds=1))
        return format_stamp(self._last_stamp)

    def _new_id(self) -> str:
        return secrets.token_hex(5)

    def add_user(
        self, name: str, email: str, company: str | None, token: str, scopes: Iterable[str]
    ) -> User:
        role = "server:user" if self.users else "server:admin"
        user = User(self._new_id(), name, email, company, role)
        self.users[user.id] = user
        self.tokens[token] = user.id
        self.scopes[token] = frozenset(scopes)
        return user

    def user_for_token(self, token: str) -> User | None:
        user_id = self.tokens.get(token)
        return self.users.get(user_id) if user_id else None

    def project_for_read(self, project_id: str, user: User | None) -> Project:
        """A project the user may read (owner, or public), else the real server's error."""
        project = self.projects.get(project_id)
        if project is None:
            raise SpeckleError("Project not found", "STREAM_NOT_FOUND", 404)
        if project.visibility == "PUBLIC" or (user and user.id == project.owner_id):
            return project
        if user is None:
            raise SpeckleError("You are not logged in to this server", "FORBIDDEN", 403)
        raise SpeckleError(NO_ACCESS, "FORBIDDEN", 403)

    def project_for_write(self, project_id: str, user: User) -> Project:
        project = self.projects.get(project_id)
        if project is None:
            raise SpeckleError("Project not found", "STREAM_NOT_FOUND", 404)
        if user.id != project.owner_id:
            raise SpeckleError(NO_ACCESS, "FORBIDDEN", 403)
        return project

    def read_denied(
        self, project_id: str, user: User | None, scopes: frozenset[str]
    ) -> int | None:
        """The HTTP status the REST object endpoints refuse a read with, ``None`` if allowed
        (``validatePermissionsReadStreamFactory``, modules/core/services/streams/auth.ts):
        public projects are open to all; then no user is 401, a missing project 404, a token
        without ``streams:read`` 401, and no role on the project 401."""
        project = self.projects.get(project_id)
        if project and project.visibility == "PUBLIC":
            return None
        if user is None:
            return 401
        if project is None:
            return 404
        if not has_scope(scopes, "streams:read") or user.id != project.owner_id:
            return 401
        return None

    def write_denied(
        self, project_id: str, user: User | None, scopes: frozenset[str]
    ) -> int | None:
        """``validatePermissionsWriteStreamFactory`` (same file): every refusal is 401, a
        missing project included (the role check fails)."""
        project = self.projects.get(project_id)
        if user is None or not has_scope(scopes, "streams:write"):
            return 401
        if project is None or user.id != project.owner_id:
            return 401
        return None

    def project_models(self, project_id: str) -> list[Model]:
        return [m for m in self.models.values() if m.project_id == project_id]

    def project_versions(self, project_id: str) -> Iterator[Version]:
        """Every version of the project, model by model (the real ``stream_commits`` table,
        found by its primary key ``(streamId, commitId)``)."""
        for model in self.project_models(project_id):
            yield from (self.versions[v] for _, v in self.by_model.get(model.id, []))

    def model_versions(self, model_id: str) -> list[Version]:
        """Newest first."""
        return [self.versions[v] for _, v in reversed(self.by_model.get(model_id, []))]

    def versions_before(self, model_id: str, cursor: str | None, limit: int) -> list[Version]:
        """Up to ``limit`` of the model's versions with ``createdAt < cursor``, newest first
        (``getPaginatedBranchCommitsItemsFactory``, repositories/commits.ts). ``cursor`` is
        compared as a time, as PostgreSQL casts it (any ISO form; below a millisecond it
        counts), with the stored millisecond ``createdAt``; one that is not a time is refused
        (the real server's error for it is not recorded)."""
        index = self.by_model.get(model_id, [])
        end = len(index)
        if cursor:
            try:
                at = datetime.fromisoformat(cursor.replace("Z", "+00:00")).astimezone(UTC)
            except ValueError:
                raise SpeckleError(f"invalid cursor {cursor!r}", "INTERNAL_SERVER_ERROR",
                                   500) from None
            at += timedelta(microseconds=-at.microsecond % 1000)  # the next whole ms
            end = bisect.bisect_left(index, (format_stamp(at),))
        chosen = index[max(0, end - max(limit, 0)):end]
        return [self.versions[v] for _, v in reversed(chosen)]

    def add_version(self, version: Version) -> None:
        """Store a version and index it by model."""
        self.versions[version.id] = version
        bisect.insort(self.by_model.setdefault(version.model_id, []),
                      (version.created_at, version.id))

    def remove_version(self, version_id: str) -> Version:
        version = self.versions.pop(version_id)
        self.by_model[version.model_id].remove((version.created_at, version.id))
        return version

    def set_created_at(self, version: Version, created_at: str) -> None:
        """Change a stored version's ``createdAt`` (tests make ties with it)."""
        self.remove_version(version.id)
        version.created_at = created_at
        self.add_version(version)

    def _duplicate(self, project_id: str, name: str, exclude: str | None = None) -> bool:
        """The real check is ``name ILIKE <new name>``, so ``_`` and ``%`` act as wildcards."""
        return any(ilike(m.name, name) for m in self.project_models(project_id) if m.id != exclude)

    # -- projects ------------------------------------------------------------------------------

    def create_project(
        self, user: User, name: str | None, description: str | None, visibility: str | None
    ) -> Project:
        now = self.stamp()
        project = Project(
            self._new_id(),
            name or "Unnamed Project",
            description or "",
            visibility or "PRIVATE",
            user.id,
            now,
            now,
        )
        self.projects[project.id] = project
        self.objects[project.id] = {}
        now = self.stamp()
        main = Model(self._new_id(), project.id, "main", "default model", user.id, now, now)
        self.models[main.id] = main
        return project

    def delete_project(self, project_id: str, user: User) -> None:
        self.project_for_write(project_id, user)
        del self.projects[project_id]
        self.objects.pop(project_id, None)
        for model in self.project_models(project_id):
            self._drop_model(model.id)

    # -- models --------------------------------------------------------------------------------

    def visible_models(self, project_id: str) -> list[Model]:
        """Listed models, newest-updated first; ``main`` is hidden while it has no version."""
        return sorted(
            (
                m
                for m in self.project_models(project_id)
                if m.name != "main" or self.by_model.get(m.id)
            ),
            key=lambda m: m.updated_at,
            reverse=True,
        )

    def create_model(
        self, user: User, project_id: str, raw_name: str, description: str | None
    ) -> Model:
        self.project_for_write(project_id, user)
        name = self._checked_name(raw_name)
        if self._duplicate(project_id, name):
            raise SpeckleError("A branch with this name already exists", "BRANCH_CREATE_ERROR", 400)
        now = self.stamp()
        model = Model(self._new_id(), project_id, name, description, user.id, now, now)
        self.models[model.id] = model
        return model

    @staticmethod
    def _checked_name(raw_name: str) -> str:
        name = model_name(raw_name)
        if not name:
            raise SpeckleError("Model name is required", "BRANCH_NAME_ERROR", 400)
        if not name_is_valid(name):
            raise SpeckleError(NAME_RULES, "BRANCH_NAME_ERROR", 400, name=raw_name)
        return name

    def update_model(
        self, user: User, project_id: str, model_id: str, name: str | None, description: str | None
    ) -> Model:
        self.project_for_write(project_id, user)
        if name is None and description is None:
            raise SpeckleError("Please specify a property to update", "BRANCH_UPDATE_ERROR", 400)
        info = {
            "projectId": project_id,
            "id": model_id,
            "name": name,
            "description": description,
            "userId": user.id,
        }
        model = self.models.get(model_id)
        if model is None or model.project_id != project_id:
            raise SpeckleError("Branch not found", "BRANCH_UPDATE_ERROR", 400, **info)
        if name is not None:
            new_name = self._checked_name(name)
            if self._duplicate(project_id, new_name, exclude=model_id):
                message = "A branch with this name already exists in the parent stream"
                raise SpeckleError(message, "BRANCH_UPDATE_ERROR", 400, **info)
            model.name = new_name
        if description is not None:
            model.description = description
        return model

    def delete_model(self, user: User, project_id: str, model_id: str) -> None:
        project = self.project_for_write(project_id, user)
        model = self.models.get(model_id)
        if model is None or model.project_id != project_id:
            raise SpeckleError("Model not found", "NOT_FOUND_ERROR", 404)
        self._drop_model(model_id)
        project.updated_at = self.stamp()

    def _drop_model(self, model_id: str) -> None:
        del self.models[model_id]
        for _, version_id in self.by_model.pop(model_id, []):
            del self.versions[version_id]

    # -- versions ------------------------------------------------------------------------------

    def create_version(self, user: User, data: dict[str, Any]) -> Version:
        project = self.project_for_write(data["projectId"], user)
        info = {
            "authorId": user.id,
            "streamId": project.id,
            "branchId": data["modelId"],
            "message": data.get("message"),
            "sourceApplication": data.get("sourceApplication"),
            "objectId": data["objectId"],
            "parents": data.get("parents") or [],
        }
        if data["objectId"] not in self.objects[project.id]:
            raise SpeckleError("Couldn't find commit object", "COMMIT_CREATE_ERROR", 400, **info)
        model = self.models.get(data["modelId"])
        if model is None or model.project_id != project.id:
            message = f"Failed to find branch with id {data['modelId']}."
            raise SpeckleError(message, "COMMIT_CREATE_ERROR", 400, **info)
        version = Version(
            self._new_id(),
            project.id,
            model.id,
            data["objectId"],
            data.get("message"),
            data.get("sourceApplication"),
            user.id,
            self.stamp(),
        )
        self.add_version(version)
        model.updated_at = project.updated_at = self.stamp()
        return version

    def _live_versions(self, project_id: str, version_ids: Iterable[str]) -> list[Version]:
        found = [self.versions.get(v) for v in version_ids]
        if not all(v and v.project_id == project_id for v in found):
            raise SpeckleError("Version not found", "NOT_FOUND_ERROR", 404)
        return [v for v in found if v]

    def update_version(
        self, user: User, project_id: str, version_id: str, message: str | None
    ) -> Version:
        self.project_for_write(project_id, user)
        if not message:
            info = {
                "projectId": project_id,
                "versionId": version_id,
                "message": message,
                "userId": user.id,
            }
            raise SpeckleError("Nothing to update", "COMMIT_UPDATE_ERROR", 500, **info)
        [version] = self._live_versions(project_id, [version_id])
        version.message = message
        self.models[version.model_id].updated_at = self.stamp()
        return version

    def delete_versions(self, user: User, project_id: str, version_ids: list[str]) -> None:
        self.project_for_write(project_id, user)
        if not version_ids:
            raise SpeckleError("No commits specified", "COMMIT_BATCH_UPDATE_ERROR", 400)
        for version in {v.id: v for v in self._live_versions(project_id, version_ids)}.values():
            self.remove_version(version.id)

    def move_versions(
        self, user: User, project_id: str, version_ids: list[str], target: str
    ) -> Model:
        """Move versions to the model named ``target`` (any case); create it, unsanitised."""
        self.project_for_write(project_id, user)
        if not version_ids:
            raise SpeckleError("No commits specified", "COMMIT_BATCH_UPDATE_ERROR", 400)
        versions = self._live_versions(project_id, version_ids)
        name = target.lower()
        model = next((m for m in self.project_models(project_id) if m.name == name), None)
        if model is None:
            if not name.strip() or not name_is_valid(name):
                message = f"Batch commit move failed: {NAME_RULES}"
                raise SpeckleError(message, "COMMIT_BATCH_UPDATE_ERROR", 400, name=target)
            now = self.stamp()
            model = Model(self._new_id(), project_id, name, None, user.id, now, now)
            self.models[model.id] = model
        for version in versions:
            self.remove_version(version.id)
            version.model_id = model.id
            self.add_version(version)
        return model

    # -- objects -------------------------------------------------------------------------------

    def save_objects(self, project_id: str, objects: Iterable[dict[str, Any]]) -> None:
        """Insert with ``ON CONFLICT IGNORE`` (``storeObjectsIfNotFoundFactory``,
        repositories/objects.ts): an id already stored keeps its first content."""
        stored = self.objects[project_id]
        for obj in objects:
            stored.setdefault(obj["id"], obj)
