"""A Speckle-compatible server for the test suite (GraphQL + object REST endpoints).

Start one with ``SpeckleTestServer().start()`` (or as a context manager), add users with
``add_user(name) -> token`` and point the unmodified specklepy client at ``server.host`` with
``use_ssl=False``. ``python -m tests.speckle_server --port 3000`` runs one standalone.

Every handler follows the real speckle-server's code and names its source file; README.md
here has the table of endpoints, sources, what is followed and what is left out.
"""

from .ratelimit import Limit, RateLimit
from .server import Exchange, SpeckleTestServer
from .store import Store

__all__ = ["Exchange", "Limit", "RateLimit", "SpeckleTestServer", "Store"]
