"""`tokencompose wait-for-server`: block until the Prefect API answers, so pasted setup commands work."""
from __future__ import annotations

import argparse
import os
import sys
import time


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("wait-for-server", help="wait until the Prefect server at PREFECT_API_URL is up",
                                   description="Poll PREFECT_API_URL/health until the server answers (a fresh "
                                               "`prefect server start` takes 8-30 s), then exit 0; exit 1 on timeout.")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")
    parser.set_defaults(handler=run_wait)


def api_url() -> str | None:
    """PREFECT_API_URL from the environment, else from the active Prefect profile."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def wait_for_api(url: str, timeout: float) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url.rstrip("/") + "/health", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def run_wait(args: argparse.Namespace) -> int:
    url = api_url()
    if not url:
        print("PREFECT_API_URL is not set: export PREFECT_API_URL=http://127.0.0.1:4200/api", file=sys.stderr)
        return 2
    if wait_for_api(url, args.timeout):
        print(f"Prefect server is up at {url}")
        return 0
    print(f"no Prefect server answered at {url} within {args.timeout:.0f} s (is `prefect server start` running?)",
          file=sys.stderr)
    return 1
