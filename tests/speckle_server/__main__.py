"""``python -m tests.speckle_server --port N``: run the test server until Ctrl-C."""

from __future__ import annotations

import argparse
import threading

from .ratelimit import RateLimit
from .server import SpeckleTestServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.speckle_server", description=__doc__)
    parser.add_argument("--port", type=int, default=3000, help="0 picks a free port")
    parser.add_argument("--user", default="alice", help="name of the user to create")
    parser.add_argument("--token", help="that user's token (default: a random one)")
    parser.add_argument(
        "--rate-limit", action="store_true", help="enforce the real server's default limits"
    )
    args = parser.parse_args(argv)
    server = SpeckleTestServer(
        args.port, rate_limit=RateLimit.speckle_defaults() if args.rate_limit else None
    )
    token = server.add_user(args.user, token=args.token)
    server.start()
    print(f"url   {server.url}\ntoken {token}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
