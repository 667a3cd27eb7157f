"""Paging the remote log when two versions share a millisecond at a page boundary.

The real server stores a version's ``createdAt`` to the millisecond and lists the next page
with ``createdAt < cursor``, the cursor being the previous page's last ``createdAt``
(repositories/commits.ts; pinned in tests/test_speckle_server_rest.py): a version made in the
same millisecond as a page's last one is never listed. The test server's clock never ties, so
these tests move a version into another's millisecond by hand, with an id that puts it on
either side of the page boundary.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

pytest.importorskip("specklepy")

from caliber.queue.speckle import checkpoint as speckle_checkpoint
from caliber.queue.speckle.events import Checkpoint, parse
from tests.remote_helpers import Remote, remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata
from tests.test_remote_checkpoints import finish, often, seen, whole_log
from tests.test_remote_queue import workload

pytestmark = pytest.mark.speckle
__all__ = ["often", "remote", "speckle_server", "speckle_token", "speckle_userdata"]

PAGE = 4  # the `often` fixture's page size


def tie(remote: Remote, version_id: str, partner_id: str, *, listed_first: bool) -> str:
    """Move version ``version_id`` into the millisecond of ``partner_id``, with a new id that
    the server lists before the partner (``listed_first``) or after it; the new id."""
    store = remote.server.store
    with store.lock:
        version = store.remove_version(version_id)
        partner = store.versions[partner_id]
        version.id = ("f" if listed_first else "0") * 9 + partner.id[-1]
        assert (version.id > partner.id) == listed_first
        version.created_at = partner.created_at
        store.add_version(version)
    return version.id


def server_paging(remote: Remote) -> list[str]:
    """Every version id the server lists when each page asks with the server's own cursor."""
    store = remote.server.store
    with store.lock:
        [model] = [m for m in store.project_models(remote.project) if m.name == "main"]
        ids: list[str] = []
        cursor = None
        while page := store.versions_before(model.id, cursor, PAGE):
            ids += [v.id for v in page]
            cursor = page[-1].created_at
    return ids


def newest_checkpoint(remote: Remote) -> Any:
    found = [parse(v.id, v.object_id, v.message,
                   dt.datetime.fromisoformat(v.created_at.replace("Z", "+00:00")))
             for v in remote.versions() if v.message.startswith("checkpoint")]
    assert found and isinstance(found[-1].body, Checkpoint)
    return found[-1]


@pytest.mark.parametrize("partner", ["checkpoint", "put"])
@pytest.mark.parametrize("listed_first", [True, False], ids=["moved-ends-page", "moved-skipped"])
@pytest.mark.parametrize("reader", ["new", "refreshing"])
def test_a_version_tied_at_a_page_boundary_is_read(
    remote: Remote, often: None, partner: str, listed_first: bool, reader: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with remote.backend() as backend, remote.backend() as early:
        finish(backend, 2)  # two finished workloads, and a checkpoint of them
        checkpoint = newest_checkpoint(remote).version_id
        assert remote.versions()[-1].id == checkpoint
        monkeypatch.setattr(speckle_checkpoint, "EVERY", 1000)  # no more checkpoints
        early.list_workloads()  # a reader that has read the log up to here
        queued = []
        for _ in range(PAGE if partner == "checkpoint" else PAGE + 1):
            backend.put(w := workload())
            queued.append(w.id)
        # newest first: the moved put, 3 puts, then the partner at the end of the first page
        versions = [v for v in reversed(remote.versions())]
        assert [v.message.split(" ")[0] for v in versions[:PAGE]] == ["queued"] * PAGE
        moved, partner_id = versions[0].id, versions[PAGE].id
        assert (partner_id == checkpoint) == (partner == "checkpoint")
        moved = tie(remote, moved, partner_id, listed_first=listed_first)
        everything = [v.id for v in reversed(remote.versions())]
        assert set(everything[PAGE - 1:PAGE + 1]) == {moved, partner_id}
        assert len(server_paging(remote)) == len(everything) - 1  # its cursor skips one
        if reader == "new":
            with remote.backend() as fresh:
                got = fresh.list_workloads()
                assert fresh.view.cutoff is not None  # it read the checkpoint, tied or not
        else:
            got = early.list_workloads()
    whole = whole_log(remote)
    assert {w.id for w in got} >= set(queued)
    assert seen(got) == [(s.id, s.status, s.attempts, s.results_id, s.history)
                         for s in whole.live()]
