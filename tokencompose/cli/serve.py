"""`tokencompose serve`: the one-command alternative to prefect.yaml + a worker."""
from __future__ import annotations

import argparse
import sys

from tokencompose.cli.server import api_url, wait_for_api


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="serve the deployments for `prefect deployment run`",
                                   description="Serve build-grounded-coco/local and train-tokencompose/local in "
                                               "this process, for the Prefect server at PREFECT_API_URL. The "
                                               "standard path is prefect.yaml with a work pool: see README.")
    parser.add_argument("--out", default="tokencompose-out", help="default output folder of the build deployment")
    parser.add_argument("--cron", help="also run the build on this schedule, e.g. '0 3 * * 0'")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the server to answer (default 120)")
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    url = api_url()
    if not url:
        print("tokencompose serve needs a running Prefect server: start one (`prefect server start`) and "
              "export PREFECT_API_URL=http://127.0.0.1:4200/api (without it, Prefect would start a temporary "
              "server that `prefect deployment run` cannot reach)", file=sys.stderr)
        return 2
    if not wait_for_api(url, args.wait):
        print(f"no Prefect server answered at {url} within {args.wait:.0f} s", file=sys.stderr)
        return 1
    from tokencompose.flows.deployments import serve_deployments

    serve_deployments(out_dir=args.out, cron=args.cron)
    return 0
