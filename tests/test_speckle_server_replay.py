"""Replay the requests recorded from a real Speckle server against the test server.

The recordings are kept in tests/data/speckle-transcripts (copied from the shared folder, whose
README.md there describes them).

Every exchange of ``transcript.jsonl``, ``transcript-extra.jsonl`` and
``transcript-caliber.jsonl`` (Caliber's own traffic, and the content negotiation of the object
endpoints for each Accept header) is sent again, in order,
with the recorded users mapped to fresh tokens and the recorded ids (projects, models, versions,
users, cursors) mapped to the ids the test server returned for them. Then status, content type,
gzip encoding and body are compared: JSON key by key in order, every value equal once ids and
urls are mapped, except timestamps (compared by format). Text bodies must be equal.

Relaxed, with their reasons (``RELAXED``): the version-create burst (which create is the first
refused depends on timing), the listing of that burst, and alice's project list (the recording
server held projects from earlier runs).
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest

pytest.importorskip("specklepy")
import requests  # a specklepy dependency

try:
    from speckle_fixtures import write_account
    from speckle_server import Limit, RateLimit, SpeckleTestServer
except ImportError:  # tests/ imported as a package
    from tests.speckle_fixtures import write_account
    from tests.speckle_server import Limit, RateLimit, SpeckleTestServer

pytestmark = pytest.mark.speckle

TRANSCRIPTS = Path(__file__).resolve().parent / "data" / "speckle-transcripts"
RECORDED_URL = "http://127.0.0.1:3000"  # the real server's canonical url
# Who alice was in each recording, and the server's canonical url there. In Caliber's own
# recording her token lacked the ``profile:email`` scope, so her email reads as null.
ALICE = {"name": "Alice", "email": "alice@example.org", "company": "Acme"}
RECORDINGS = {
    "transcript.jsonl": (ALICE, None, RECORDED_URL),
    "transcript-extra.jsonl": (ALICE, None, RECORDED_URL),
    "transcript-caliber.jsonl": (
        {"name": "Real Tester", "email": "alice@example.org", "company": "x"},
        ["streams:read", "streams:write", "profile:read", "users:read"],
        "http://127.0.0.1:3300",
    ),
}
ID = re.compile(r"\b[0-9a-f]{10}\b")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
BURST = range(411, 513)  # X40: version.create back to back until refused
RELAXED = {
    **dict.fromkeys(BURST, "X40 burst: which create is refused first depends on timing"),
    513: "X41: lists the burst, whose size depends on timing (compared: the versions made)",
    405: "X29: the recording server held 7 projects from earlier runs (compared as a prefix)",
}


def load(name: str) -> list[dict[str, Any]]:
    path = TRANSCRIPTS / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Replayer:
    """Sends recorded requests with mapped ids and compares the answers."""

    def __init__(
        self,
        server: SpeckleTestServer,
        alice: dict[str, str] = ALICE,
        scopes: list[str] | None = None,
        recorded_url: str = RECORDED_URL,
    ) -> None:
        self.server = server
        self.recorded_url = recorded_url
        alice_scopes = {"scopes": scopes} if scopes else {}
        self.tokens = {
            "alice": server.add_user(**alice, **alice_scopes),
            "bob": server.add_user("Bob", email="bob@example.org", company="Acme"),
            "unknown": "not-a-token",
        }
        self.ids: dict[str, str] = {}  # recorded id or cursor -> ours
        self.session = requests.Session()
        self.compared = 0
        self.problems: list[str] = []
        self.burst_statuses: list[int] = []
        self.burst_templates: dict[int, dict[str, Any]] = {}

    # -- mapping -------------------------------------------------------------------------------

    def map_value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.map_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.map_value(v) for v in value]
        if isinstance(value, str):
            return self.ids.get(value, value)
        return value

    def map_text(self, text: str) -> str:
        text = text.replace(self.recorded_url, self.server.url)
        return ID.sub(lambda m: self.ids.get(m.group(), m.group()), text)

    def learn(self, rec: Any, ours: Any, key: str = "") -> None:
        """Pair ids (and cursors) the recording and the test server answered in one place."""
        if isinstance(rec, dict) and isinstance(ours, dict):
            for k in rec.keys() & ours.keys():
                self.learn(rec[k], ours[k], k)
        elif isinstance(rec, list) and isinstance(ours, list) and len(rec) == len(ours):
            for r, o in zip(rec, ours, strict=True):
                self.learn(r, o, key)
        elif isinstance(rec, str) and isinstance(ours, str) and rec not in self.ids:
            is_id = key in ("id", "data") and ID.fullmatch(rec) and ID.fullmatch(ours)
            if (is_id or key == "cursor") and ours not in self.ids.values():
                self.ids[rec] = ours

    # -- one exchange --------------------------------------------------------------------------

    def send(self, exchange: dict[str, Any]) -> requests.Response:
        rq = exchange["request"]
        headers: dict[str, str | None] = {"Accept": None}  # none, unless it was recorded
        headers.update((k, v) for k, v in rq["headers"] if k in ("Accept", "Accept-Encoding"))
        auth = dict(rq["headers"]).get("Authorization")
        if auth:
            headers["Authorization"] = "Bearer " + self.tokens[auth.split(":")[1].rstrip(">")]
        path = "/".join(self.ids.get(part, part) for part in rq["path"].split("/"))
        body = rq.get("body") or {}
        kwargs: dict[str, Any] = {}
        if "json" in body:
            kwargs["json"] = self.map_value(body["json"])
        elif "multipart" in body:
            kwargs["files"] = {
                f"batch-{i}": (f"batch-{i}", self.part(p), dict(p["part_headers"])["Content-Type"])
                for i, p in enumerate(body["multipart"], 1)
            }
        elif "text" in body:
            form = parse_qs(body["text"])
            kwargs["data"] = urlencode({k: self.map_value(v[0]) for k, v in form.items()})
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        url = self.server.url + path
        return self.session.request(rq["method"], url, headers=headers, timeout=10, **kwargs)

    @staticmethod
    def part(recorded: dict[str, Any]) -> bytes:
        data = json.dumps(recorded["json"]).encode()
        return gzip.compress(data) if recorded.get("gunzipped") else data

    def replay(self, exchanges: list[dict[str, Any]]) -> None:
        for exchange in exchanges:
            if exchange["seq"] in BURST:
                self.burst_templates.setdefault(exchange["response"]["status"], exchange)
        previous_end = None
        waits = bool(self.burst_templates)  # only the burst's recording waits out the limit
        for exchange in exchanges:
            if waits and previous_end and exchange["t"] - previous_end > 0.5:
                time.sleep(1.05)  # the recording paused (X42 waits out the 1/s limit)
            previous_end = exchange["t"] + exchange["ms"] / 1000
            self.check(exchange, self.send(exchange))

    def check(self, exchange: dict[str, Any], response: requests.Response) -> None:
        seq, recorded = exchange["seq"], exchange["response"]
        where = f"#{seq} [{exchange['label']}]"
        ours_body = self.body_of(response)
        rec_body = recorded["body"].get("json", recorded["body"].get("text", ""))
        status = recorded["status"]
        if seq in BURST:
            self.burst_statuses.append(response.status_code)
            if response.status_code != status and response.status_code in self.burst_templates:
                template = self.burst_templates[response.status_code]
                rec_body = copy.deepcopy(template["response"]["body"]["json"])
                status = response.status_code
                if status == 200:
                    message = exchange["request"]["body"]["json"]["variables"]["input"]["message"]
                    rec_body["data"]["data"]["data"]["message"] = message
        elif seq in (405, 513):
            rec_body = self.trimmed(seq, rec_body, ours_body)
        self.compared += 1
        if response.status_code != status:
            self.problems.append(f"{where} status {response.status_code} != {status}")
            return
        rec_headers = {k.lower(): v for k, v in recorded["headers"]}
        for header in ("content-type", "content-encoding"):
            if (rec_headers.get(header) or "").lower() != (
                response.headers.get(header) or ""
            ).lower():
                self.problems.append(f"{where} {header} {response.headers.get(header)!r}")
        self.learn(rec_body, ours_body)
        self.compare(rec_body, ours_body, where)

    @staticmethod
    def body_of(response: requests.Response) -> Any:
        if response.headers.get("Content-Type", "").startswith("application/json"):
            return response.json()
        return response.text

    def trimmed(self, seq: int, rec: dict[str, Any], ours: Any) -> Any:
        """The part of a relaxed listing the test server should reproduce exactly."""
        rec = copy.deepcopy(rec)
        node, ours_node = rec["data"], ours.get("data") or {}
        while "items" not in node:
            node, ours_node = node["data"], ours_node.get("data") or {}
        ours_items = ours_node.get("items", [])
        if seq == 405:
            node["items"] = node["items"][: len(ours_items)]
        else:  # the versions the test server let through, in the recorded order
            made = {item["message"] for item in ours_items}
            node["items"] = [item for item in node["items"] if item["message"] in made]
        node["totalCount"] = n = len(ours_items)
        assert n >= (3 if seq == 405 else 60), f"#{seq}: only {n} items"
        if seq == 405:  # an opaque cursor over the last item of the page
            self.ids[node["cursor"]] = ours_node["cursor"]
        return rec

    def compare(self, rec: Any, ours: Any, where: str, path: str = "") -> None:
        if isinstance(rec, dict):
            if not isinstance(ours, dict) or list(rec) != list(ours):
                keys = list(ours) if isinstance(ours, dict) else type(ours).__name__
                self.problems.append(f"{where} {path}: keys {keys} != {list(rec)}")
                return
            for key in rec:
                self.compare(rec[key], ours[key], where, f"{path}.{key}")
        elif isinstance(rec, list):
            if not isinstance(ours, list) or len(rec) != len(ours):
                self.problems.append(f"{where} {path}: {ours!r:.200} != {rec!r:.200}")
                return
            for i, (r, o) in enumerate(zip(rec, ours, strict=True)):
                self.compare(r, o, where, f"{path}[{i}]")
        elif isinstance(rec, str) and TIMESTAMP.match(rec) and rec not in self.ids:
            if not (isinstance(ours, str) and TIMESTAMP.match(ours)):
                self.problems.append(f"{where} {path}: {ours!r} is not a timestamp")
        else:
            expected = rec
            if isinstance(rec, str):
                expected = self.ids[rec] if rec in self.ids else self.map_text(rec)
            if expected != ours or type(expected) is not type(ours):
                self.problems.append(f"{where} {path}: {ours!r:.300} != {expected!r:.300}")


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_replay_matches_recording(name: str) -> None:
    exchanges = load(name)
    rate_limit = RateLimit(version_create=Limit(1, 100))  # the real default, alone
    with SpeckleTestServer(rate_limit=rate_limit) as server:
        replayer = Replayer(server, *RECORDINGS[name])
        replayer.replay(exchanges)
    relaxed = sum(e["seq"] in RELAXED for e in exchanges)
    burst = replayer.burst_statuses
    print(
        f"\n{name}: {replayer.compared} exchanges compared, {relaxed} of them relaxed"
        + (f"; burst: {burst.count(200)} created, {burst.count(429)} refused" if burst else "")
    )
    assert not replayer.problems, "\n".join(replayer.problems[:40])
    assert replayer.compared == len(exchanges)
    if burst:
        assert 429 in burst
        assert burst.count(200) >= 60


# -- client-level outcomes ---------------------------------------------------------------------


def outcome(step: Callable[[], Any]) -> dict[str, Any]:
    """What a client step returned or raised, in the terms of ``client-results.json``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = step()
            result: dict[str, Any] = {"ok": True, "value": value}
        except Exception as exc:
            errors = getattr(exc, "errors", None) or []
            result = {
                "ok": False,
                "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "graphql": [(e["message"], e["extensions"]["code"]) for e in errors],
            }
    result["warnings"] = [
        w.category.__name__ for w in caught if not issubclass(w.category, DeprecationWarning)
    ]
    return result


def recorded_outcome(recorded: dict[str, Any]) -> dict[str, Any]:
    error = recorded.get("error") or {}
    result: dict[str, Any] = {"ok": recorded["ok"]}
    if not recorded["ok"]:
        result["type"] = error["type"]
        result["graphql"] = [
            (e["message"], e["extensions"]["code"]) for e in error.get("graphql_errors", [])
        ]
    result["warnings"] = [w.split(":")[0] for w in recorded.get("warnings", [])]
    return result


def client_steps(server: SpeckleTestServer, userdata: Path) -> dict[str, Callable[[], Any]]:
    """The recorded client steps (by number), replayed with the unmodified specklepy."""
    from specklepy.api import operations
    from specklepy.api.client import SpeckleClient
    from specklepy.api.credentials import Account, get_default_account
    from specklepy.api.inputs.model_inputs import CreateModelInput
    from specklepy.api.inputs.project_inputs import ProjectCreateInput, ProjectModelsFilter
    from specklepy.api.inputs.version_inputs import (
        CreateVersionInput,
        DeleteVersionsInput,
        MoveVersionsInput,
        UpdateVersionInput,
    )
    from specklepy.objects import Base
    from specklepy.transports.memory import MemoryTransport
    from specklepy.transports.server import ServerTransport

    alice = server.add_user("Alice", email="alice@example.org", company="Acme")
    bob_token = server.add_user("Bob", email="bob@example.org", company="Acme")
    write_account(userdata, server, alice)
    s: dict[str, Any] = {}  # what earlier steps made

    def client(token: str | None = None) -> Any:
        made = SpeckleClient(host=server.host, use_ssl=False)
        if token:
            made.authenticate_with_token(token)
        return made

    def job(n: int) -> Base:
        obj = Base()
        obj["spec"] = {"kind": "mesh", "params": {"tol": 0.001, "nested": {"deep": [1, n]}}}
        child = Base()
        child["payload"], child["n"] = "child-data", n
        obj["@child"], obj["@(3)numbers"] = child, list(range(10))
        return obj

    def send(c: Any, project: str, n: int) -> str:
        return operations.send(
            job(n), [ServerTransport(project, client=c)], use_default_cache=False
        )

    def model(name: str, project: str | None = None) -> Any:
        made = s["c"].model.create(CreateModelInput(name=name, project_id=project or s["p"]))
        return (made.name, made.display_name)

    def version(n: int) -> Any:
        s.setdefault("v", []).append(
            s["c"].version.create(
                CreateVersionInput(
                    object_id=s["o"], model_id=s["m"], project_id=s["p"], message=f"job #{n}"
                )
            )
        )

    def create(object_id: str, model_id: str, c: Any = None) -> Any:
        return (c or s["c"]).version.create(
            CreateVersionInput(object_id=object_id, model_id=model_id, project_id=s["p"])
        )

    def walk() -> Any:
        pages, cursor = [], None
        while True:
            page = s["c"].version.get_versions(s["m"], s["p"], limit=2, cursor=cursor)
            pages.append([v.message for v in page.items])
            if not page.cursor:
                return pages
            cursor = page.cursor

    def receive(object_id: str, c: Any = None) -> Any:
        remote = ServerTransport(s["p"], client=c or s["c"])
        return operations.receive(object_id, remote, local_transport=MemoryTransport()).id

    def first(project_id: str) -> Any:
        return (
            s["c"]
            .project.create(
                ProjectCreateInput(
                    name=project_id, description="workflow queue", visibility="PRIVATE"
                )
            )
            .id
        )

    bad = Account.from_token("not-a-token", server.url)
    return {
        "01": lambda: s.update(c=client()),
        "02": lambda: s.update(c=client(alice)),
        "03": lambda: s["c"].server.get().name,
        "04": lambda: s["c"].server.version(),
        "05": lambda: s["c"].active_user.get().name,
        "06": lambda: s.update(account=get_default_account()),
        "07": lambda: client().authenticate_with_account(s["account"]),
        "08": lambda: s.update(p=first("queue-test")),
        "09": lambda: s["c"].project.get(s["p"]).name,
        "10": lambda: s.update(
            m=s["c"].model.create(CreateModelInput(name="jobs", project_id=s["p"])).id
        ),
        "11": lambda: model("Queue/Jobs-Upper"),
        "12": lambda: model("jobs"),
        "12b": lambda: model("JOBS"),
        "13": lambda: model("/bad//name"),
        "13b": lambda: model("bad,name"),
        "13c": lambda: model(" Spaced / Name "),
        "14": lambda: [m.name for m in s["c"].model.get_models(s["p"]).items],
        "15": lambda: (
            s["c"]
            .model.get_models(s["p"], models_filter=ProjectModelsFilter(search="jobs"))
            .total_count
        ),
        "15c": lambda: s["c"].model.get_models(s["p"], models_limit=1).cursor,
        "16": lambda: s["c"].model.get(s["m"], s["p"]).name,
        "17": lambda: s["c"].model.get("0123456789", s["p"]),
        "18": lambda: s.update(o=send(s["c"], s["p"], 0)),
        "18b": lambda: send(s["c"], s["p"], 0),
        "19": lambda: version(1),
        **{f"20.{n}": (lambda n=n: version(n)) for n in range(2, 6)},
        "21": walk,
        "22": lambda: s["c"].version.get(s["v"][0].id, s["p"]).message,
        "23": lambda: s["c"].version.update(
            UpdateVersionInput(version_id=s["v"][0].id, project_id=s["p"], message="x")
        ),
        "24": lambda: s["c"].version.delete(
            DeleteVersionsInput(version_ids=[s["v"][1].id], project_id=s["p"])
        ),
        "26": lambda: s["c"].version.get(s["v"][1].id, s["p"]),
        "26b": lambda: s["c"].version.move_to_model(
            MoveVersionsInput(
                target_model_name="queue/done", version_ids=[s["v"][2].id], project_id=s["p"]
            )
        ),
        "27": lambda: (
            s["c"].model.get_with_versions(s["m"], s["p"], versions_limit=2).versions.total_count
        ),
        "28": lambda: receive(s["o"]),
        "29": lambda: receive("f" * 32),
        "30": lambda: client("not-a-token"),
        "31": lambda: client("not-a-token").project.get(s["p"]),
        "32": lambda: (c := client(), c.authenticate_with_account(bad), c.active_user.get()),
        "33": lambda: s["c"].project.get("abcdef1234"),
        "34": lambda: create("0" * 32, s["m"]),
        "35": lambda: create(s["o"], "0123456789"),
        "36": lambda: model("x", "abcdef1234"),
        "37": lambda: s.update(bob=client(bob_token)),
        "38": lambda: s["bob"].project.get(s["p"]),
        "39": lambda: s["bob"].model.get_models(s["p"]),
        "40": lambda: send(s["bob"], s["p"], 9),
        "41": lambda: receive(s["o"], s["bob"]),
        "42": lambda: create(s["o"], s["m"], s["bob"]),
        "43": lambda: send(s["c"], "abcdef1234", 9),
    }


@pytest.mark.filterwarnings("ignore:Call to deprecated:DeprecationWarning")
def test_client_outcomes_match_recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = TRANSCRIPTS / "client-results.json"
    monkeypatch.setenv("SPECKLE_USERDATA_PATH", str(tmp_path))
    compared, problems = 0, []
    with SpeckleTestServer() as server:
        steps = client_steps(server, tmp_path)
        for recorded in json.loads(path.read_text())["results"]:
            number = recorded["step"].split()[0]
            if number not in steps or "ok" not in recorded:
                continue
            ours, expected = outcome(steps[number]), recorded_outcome(recorded)
            compared += 1
            if {k: ours.get(k) for k in expected} != expected:
                problems.append(f"{recorded['step']}: {ours} != {expected}")
    print(f"\nclient-results.json: {compared} client steps compared")
    assert not problems, "\n".join(problems)
    assert compared >= 45
