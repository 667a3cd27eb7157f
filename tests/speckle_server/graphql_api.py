"""``POST /graphql``: ``schema.graphql`` executed with graphql-core over the ``Store``.

Each resolver names the real resolver it follows (paths under ``packages/server/`` of
speckle-server; the table in README.md lists them with what is left out).

Objects are handed to graphql-core as dicts of their scalar fields (plus ``_obj``, the stored
record, for the fields that take arguments). Errors are ``SpeckleError``s raised where the real
server raised them, so their ``path`` matches the recordings.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphql import GraphQLError, GraphQLResolveInfo, build_schema, graphql_sync

from .ratelimit import RateLimiter
from .store import (
    MAX_VERSIONS_PAGE,
    Model,
    Project,
    SpeckleError,
    Store,
    User,
    Version,
    has_scope,
    ilike,
)

SCHEMA = build_schema(Path(__file__).with_name("schema.graphql").read_text())
RATE_LIMITED = (
    "You have sent too many requests. You are being rate limited. Please try again later."
)
SCOPES = {
    "streams:read": "Read your streams, and any associated information (branches, commits, "
    "objects).",
    "streams:write": "Create streams on your behalf, and any associated data (branches, commits, "
    "objects).",
    "profile:read": "Read your profile information.",
    "profile:write": "Make actions on your profile.",
    "profile:email": "Read the email address you registered with.",
    "users:read": "Read other users' profiles.",
    "server:stats": "Request server stats from the API. Only works in conjunction with a "
    '"server:admin" role.',
}

ALL_SCOPES = frozenset(SCOPES)
Obj = dict[str, Any]


@dataclass
class Context:
    """What every resolver sees: the data, the caller, the public url and the rate limiter."""

    store: Store
    user: User | None
    url: str
    limiter: RateLimiter | None
    source: str  # who the rate limits count against (user id, or client address)
    scopes: frozenset[str] = ALL_SCOPES  # the token's scopes
    token: bool = True  # whether the request carried a token

    def signed_in(self) -> User:
        if self.user is None:
            raise SpeckleError("Must provide an auth token", "UNAUTHORIZED", 401)
        return self.user

    def require_scope(self, scope: str) -> None:
        """``@hasScope`` (modules/core/graph/directives/hasScope.ts): when there is a token,
        it must carry the scope (``validateScopes``, modules/shared/services/auth.ts)."""
        if self.token and not has_scope(self.scopes, scope):
            message = f"Your auth token does not have the required scope: {scope}."
            raise SpeckleError(message, "FORBIDDEN", 403, scope=scope)


# -- representations ---------------------------------------------------------------------------


def limited_user(store: Store, user_id: str) -> Obj | None:
    user = store.users.get(user_id)
    if user is None:
        return None
    return {
        "id": user.id,
        "name": user.name,
        "bio": None,
        "company": user.company,
        "avatar": None,
        "verified": False,
        "role": user.role,
    }


def project_obj(ctx: Context, p: Project) -> Obj:
    def source_apps(_: GraphQLResolveInfo) -> list[str]:
        """``Project.sourceApps`` (resolvers/projects.ts, ``getStreamsSourceAppsFactory`` in
        repositories/streams.ts): a field resolver, run only when the field is asked for, that
        reads the source application of every version of the project, as the real one does."""
        apps = {v.source_application for v in ctx.store.project_versions(p.id)}
        return sorted(a for a in apps if a)

    return {
        "_obj": p,
        "id": p.id,
        "name": p.name,
        "description": p.description,
        "visibility": p.visibility,
        "allowPublicComments": p.allow_public_comments,
        "role": "stream:owner" if ctx.user and ctx.user.id == p.owner_id else None,
        "createdAt": p.created_at,
        "updatedAt": p.updated_at,
        "sourceApps": source_apps,
        "workspaceId": None,
    }


def preview_url(ctx: Context, v: Version) -> str:
    return f"{ctx.url}/preview/{v.project_id}/commits/{v.id}"


def model_obj(ctx: Context, m: Model) -> Obj:
    latest = ctx.store.versions_before(m.id, None, 1)
    return {
        "_obj": m,
        "id": m.id,
        "name": m.name,
        "displayName": m.name.split("/")[-1],
        "description": m.description,
        "createdAt": m.created_at,
        "updatedAt": m.updated_at,
        "previewUrl": preview_url(ctx, latest[0]) if latest else None,
        "author": limited_user(ctx.store, m.author_id),
    }


def version_obj(ctx: Context, v: Version) -> Obj:
    return {
        "_obj": v,
        "id": v.id,
        "referencedObject": v.object_id,
        "message": v.message,
        "sourceApplication": v.source_application,
        "createdAt": v.created_at,
        "previewUrl": preview_url(ctx, v),
        "authorUser": limited_user(ctx.store, v.author_id),
    }


def page(items: list[Any], limit: int, cursor: str | None, key: Callable[[Any], str]) -> Obj:
    """One page after ``cursor`` (the key of the previous page's last item); ``cursor`` of the
    result is the key of its last item, ``None`` on an empty page, as the real server does."""
    rest = [i for i in items if key(i) < cursor] if cursor else items
    chosen = rest[: max(limit, 0)]
    return {
        "totalCount": len(items),
        "cursor": key(chosen[-1]) if chosen else None,
        "items": chosen,
    }


# -- queries -----------------------------------------------------------------------------------


def server_info(_: None, info: GraphQLResolveInfo) -> Obj:
    """modules/core/graph/resolvers/server.ts (``Query.serverInfo``)."""
    return {
        "name": "My new Speckle Server",
        "company": "Unknown Company",
        "description": "This a community deployment of a Speckle Server.",
        "adminContact": "n/a",
        "canonicalUrl": info.context.url,
        "version": "dev",
        "scopes": [{"name": k, "description": v} for k, v in SCOPES.items()],
        "authStrategies": [{"id": "local", "name": "Local", "icon": "TODO"}],
        "workspaces": {"workspacesEnabled": False},
    }


def active_user(_: None, info: GraphQLResolveInfo) -> Obj | None:
    """``activeUser @hasScope("profile:read")`` (assets/core/typedefs/user.graphql); ``email``
    as the ``User.email`` resolver (modules/core/graph/resolvers/users.ts) gives it: one's own
    only with ``profile:email``, else null."""
    ctx: Context = info.context
    ctx.require_scope("profile:read")
    user = ctx.user
    if user is None:
        return None
    email = user.email if has_scope(ctx.scopes, "profile:email") else None
    return {**(limited_user(ctx.store, user.id) or {}), "email": email, "_obj": user}


def user_projects(
    parent: Obj,
    info: GraphQLResolveInfo,
    limit: int,
    cursor: str | None = None,
    filter: Obj | None = None,
) -> Obj:
    """modules/core/graph/resolvers/projects.ts (``User.projects``)."""
    ctx: Context = info.context
    search = (filter or {}).get("search")
    owned = [
        p
        for p in ctx.store.projects.values()
        if p.owner_id == parent["_obj"].id and (not search or ilike(p.name, f"%{search}%"))
    ]
    owned.sort(key=lambda p: (p.updated_at, p.id), reverse=True)

    def key(p: Project) -> str:
        raw = json.dumps({"updatedAt": p.updated_at, "id": p.id}, separators=(",", ":"))
        return base64.b64encode(raw.encode()).decode()

    after = json.loads(base64.b64decode(cursor)) if cursor else None
    if after:
        owned = [p for p in owned if (p.updated_at, p.id) < (after["updatedAt"], after["id"])]
    result = page(owned, limit, None, key)
    return {**result, "items": [project_obj(ctx, p) for p in result["items"]]}


def project(_: None, info: GraphQLResolveInfo, id: str) -> Obj:
    """``project @hasScope("streams:read")`` (assets/core/typedefs/projects.graphql)."""
    ctx: Context = info.context
    ctx.require_scope("streams:read")
    return project_obj(ctx, ctx.store.project_for_read(id, ctx.user))


def project_models(
    parent: Obj,
    info: GraphQLResolveInfo,
    limit: int,
    cursor: str | None = None,
    filter: Obj | None = None,
) -> Obj:
    """modules/core/graph/resolvers/models.ts (``Project.models``)."""
    ctx: Context = info.context
    f = filter or {}
    models = ctx.store.visible_models(parent["id"])

    def keep(m: Model) -> bool:
        versions = ctx.store.model_versions  # read only when a filter asks
        return all(
            (
                not f.get("search") or ilike(m.name, f"%{f['search']}%"),
                not f.get("ids") or m.id in f["ids"],
                m.id not in (f.get("excludeIds") or ()),
                not f.get("onlyWithVersions") or bool(ctx.store.by_model.get(m.id)),
                not f.get("sourceApps")
                or any(v.source_application in f["sourceApps"] for v in versions(m.id)),
                not f.get("contributors")
                or any(v.author_id in f["contributors"] for v in versions(m.id)),
            )
        )

    result = page([m for m in models if keep(m)], limit, cursor, lambda m: m.updated_at)
    return {**result, "items": [model_obj(ctx, m) for m in result["items"]]}


def project_model(parent: Obj, info: GraphQLResolveInfo, id: str) -> Obj:
    """modules/core/graph/resolvers/models.ts (``Project.model``)."""
    # Like the real server, the model is looked up by id alone, whatever project was asked for.
    model = info.context.store.models.get(id)
    if model is None:
        raise SpeckleError("Model not found", "BRANCH_NOT_FOUND", 404)
    return model_obj(info.context, model)


def project_model_by_name(parent: Obj, info: GraphQLResolveInfo, name: str) -> Obj:
    """modules/core/graph/resolvers/models.ts (``Project.modelByName``): the dataloader
    (graph/dataloaders/index.ts) finds names by ``ILIKE`` but keys the rows by their stored
    name and looks the asked name up exactly, so only the exact stored name is found."""
    ctx: Context = info.context
    for model in ctx.store.project_models(parent["id"]):
        if model.name == name:
            return model_obj(ctx, model)
    raise SpeckleError("Model not found", "BRANCH_NOT_FOUND", 404)


def project_version(parent: Obj, info: GraphQLResolveInfo, id: str) -> Obj:
    """modules/core/graph/resolvers/versions.ts (``Project.version``)."""
    version = info.context.store.versions.get(id)
    if version is None or version.project_id != parent["id"]:
        raise SpeckleError("Version not found", "COMMIT_NOT_FOUND", 404)
    return version_obj(info.context, version)


def model_versions(
    parent: Obj,
    info: GraphQLResolveInfo,
    limit: int,
    cursor: str | None = None,
    filter: Obj | None = None,
) -> Obj:
    """modules/core/graph/resolvers/models.ts (``Model.versions``) and
    services/commit/retrieval.ts (``getPaginatedBranchCommitsFactory``): over 100 is refused,
    priority ids first, the cursor is the last item's ``createdAt``."""
    ctx: Context = info.context
    if limit > MAX_VERSIONS_PAGE:
        message = "Cannot return more than 100 items, please use pagination."
        raise SpeckleError(message, "BAD_REQUEST_ERROR", 400)
    store, model_id = ctx.store, parent["id"]
    priority_ids = (filter or {}).get("priorityIds") or []
    first: list[Version] = []
    if priority_ids and not cursor:  # loaded only on the first page, in the order asked
        found = (store.versions.get(i) for i in dict.fromkeys(priority_ids))
        first = [v for v in found if v and v.model_id == model_id]
        if (filter or {}).get("priorityIdsOnly"):
            return page_obj(ctx, first[: max(limit, 0)], len(first))
    # the rest of the page: the newest with ``createdAt < cursor``, less the priority ids
    # (excluded on every page); the total counts them all
    rest = store.versions_before(model_id, cursor, max(limit, 0) + len(priority_ids))
    rest = [v for v in rest if v.id not in priority_ids]
    items = (first + rest)[: max(limit, 0)]
    return page_obj(ctx, items, len(store.by_model.get(model_id, [])))


def page_obj(ctx: Context, items: list[Version], total: int) -> Obj:
    """A page of versions; its cursor is the last item's ``createdAt``, as the real server's."""
    return {"totalCount": total, "cursor": items[-1].created_at if items else None,
            "items": [version_obj(ctx, v) for v in items]}


def version_model(parent: Obj, info: GraphQLResolveInfo) -> Obj:
    return model_obj(info.context, info.context.store.models[parent["_obj"].model_id])


# -- mutations ---------------------------------------------------------------------------------


def namespace(scope: str | None) -> Callable[[None, GraphQLResolveInfo], Obj]:
    """``projectMutations``/``modelMutations`` (``@hasServerRole(SERVER_GUEST)
    @hasScope("streams:write")``) and ``versionMutations`` (the role alone)."""

    def resolve(_: None, info: GraphQLResolveInfo) -> Obj:
        info.context.signed_in()
        if scope:
            info.context.require_scope(scope)
        return {}

    return resolve


def scoped(scope: str, resolver: Callable[..., Any]) -> Callable[..., Any]:
    """A resolver under ``@hasScope(scope)``."""

    def resolve(parent: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
        info.context.require_scope(scope)
        return resolver(parent, info, **args)

    return resolve


def project_create(_: Obj, info: GraphQLResolveInfo, input: Obj | None = None) -> Obj:
    """modules/core/graph/resolvers/projects.ts (``ProjectMutations``); the same file for
    update and delete."""
    ctx: Context = info.context
    i = input or {}
    created = ctx.store.create_project(
        ctx.signed_in(), i.get("name"), i.get("description"), i.get("visibility")
    )
    return project_obj(ctx, created)


def project_update(_: Obj, info: GraphQLResolveInfo, update: Obj) -> Obj:
    ctx: Context = info.context
    p = ctx.store.project_for_write(update["id"], ctx.signed_in())
    for field, attr in (
        ("name", "name"),
        ("description", "description"),
        ("visibility", "visibility"),
        ("allowPublicComments", "allow_public_comments"),
    ):
        if update.get(field) is not None:
            setattr(p, attr, update[field])
    p.updated_at = ctx.store.stamp()
    return project_obj(ctx, p)


def project_delete(_: Obj, info: GraphQLResolveInfo, id: str) -> bool:
    info.context.store.delete_project(id, info.context.signed_in())
    return True


def model_create(_: Obj, info: GraphQLResolveInfo, input: Obj) -> Obj:
    """modules/core/graph/resolvers/models.ts (``ModelMutations``), services/branch/
    management.ts; the same files for update and delete."""
    ctx: Context = info.context
    model = ctx.store.create_model(
        ctx.signed_in(), input["projectId"], input["name"], input.get("description")
    )
    return model_obj(ctx, model)


def model_update(_: Obj, info: GraphQLResolveInfo, input: Obj) -> Obj:
    ctx: Context = info.context
    model = ctx.store.update_model(
        ctx.signed_in(),
        input["projectId"],
        input["id"],
        input.get("name"),
        input.get("description"),
    )
    return model_obj(ctx, model)


def model_delete(_: Obj, info: GraphQLResolveInfo, input: Obj) -> bool:
    info.context.store.delete_model(info.context.signed_in(), input["projectId"], input["id"])
    return True


def version_create(_: Obj, info: GraphQLResolveInfo, input: Obj) -> Obj:
    """modules/core/graph/resolvers/versions.ts (``VersionMutations.create``): the
    ``COMMIT_CREATE`` limit per user first; the same file for update, delete, move and
    markReceived."""
    ctx: Context = info.context
    user = ctx.signed_in()
    verdict = ctx.limiter.consume("version_create", ctx.source) if ctx.limiter else None
    if verdict and not verdict.allowed:
        raise SpeckleError(RATE_LIMITED, "RATE_LIMIT_ERROR", 429)
    return version_obj(ctx, ctx.store.create_version(user, input))


def version_update(_: Obj, info: GraphQLResolveInfo, input: Obj) -> Obj:
    ctx: Context = info.context
    version = ctx.store.update_version(
        ctx.signed_in(), input["projectId"], input["versionId"], input.get("message")
    )
    return version_obj(ctx, version)


def version_delete(_: Obj, info: GraphQLResolveInfo, input: Obj) -> bool:
    ctx: Context = info.context
    ctx.store.delete_versions(ctx.signed_in(), input["projectId"], input["versionIds"])
    return True


def version_move(_: Obj, info: GraphQLResolveInfo, input: Obj) -> Obj:
    ctx: Context = info.context
    model = ctx.store.move_versions(
        ctx.signed_in(), input["projectId"], input["versionIds"], input["targetModelName"]
    )
    return model_obj(ctx, model)


def version_received(_: Obj, info: GraphQLResolveInfo, input: Obj) -> bool:
    ctx: Context = info.context
    ctx.store.project_for_read(input["projectId"], ctx.signed_in())
    if input["versionId"] not in ctx.store.versions:
        raise SpeckleError("Version not found", "COMMIT_NOT_FOUND", 404)
    return True


RESOLVERS: dict[str, Callable[..., Any]] = {
    "Query.serverInfo": server_info,
    "Query.activeUser": active_user,
    "Query.otherUser": scoped(
        "users:read", lambda _, info, id: limited_user(info.context.store, id)
    ),
    "Query.project": project,
    "User.projects": user_projects,
    "Project.models": project_models,
    "Project.model": project_model,
    "Project.modelByName": project_model_by_name,
    "Project.version": project_version,
    "Model.versions": model_versions,
    "Version.model": version_model,
    "Mutation.projectMutations": namespace("streams:write"),
    "Mutation.modelMutations": namespace("streams:write"),
    "Mutation.versionMutations": namespace(None),
    "ProjectMutations.create": project_create,
    "ProjectMutations.update": project_update,
    "ProjectMutations.delete": project_delete,
    "ModelMutations.create": model_create,
    "ModelMutations.update": model_update,
    "ModelMutations.delete": model_delete,
    "VersionMutations.create": scoped("streams:write", version_create),
    "VersionMutations.update": scoped("streams:write", version_update),
    "VersionMutations.delete": scoped("streams:write", version_delete),
    "VersionMutations.moveToModel": scoped("streams:write", version_move),
    "VersionMutations.markReceived": scoped("streams:read", version_received),
}
for _name, _resolver in RESOLVERS.items():
    _type, _field = _name.split(".")
    SCHEMA.get_type(_type).fields[_field].resolve = _resolver  # type: ignore[union-attr]


def _formatted(error: GraphQLError) -> Obj:
    out = error.formatted
    if "code" not in out.get("extensions", {}):
        code = "GRAPHQL_VALIDATION_FAILED" if error.path is None else "INTERNAL_SERVER_ERROR"
        out["extensions"] = {"code": code, **out.get("extensions", {})}
    return out


def execute(ctx: Context, request: Obj) -> tuple[int, Obj]:
    """Run one GraphQL request; return the HTTP status and the JSON body."""
    result = graphql_sync(
        SCHEMA,
        request.get("query") or "",
        context_value=ctx,
        variable_values=request.get("variables"),
        operation_name=request.get("operationName"),
    )
    if not result.errors:
        return 200, {"data": result.data}
    errors = [_formatted(e) for e in result.errors]
    codes = {e["extensions"]["code"] for e in errors}
    if "RATE_LIMIT_ERROR" in codes:
        status = 429
    elif "GRAPHQL_VALIDATION_FAILED" in codes:
        status = 400
    else:
        status = 200
    return status, {"errors": errors, "data": result.data}
