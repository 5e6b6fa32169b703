"""`tokencompose serve`: the one-command alternative to prefect.yaml + a worker."""
from __future__ import annotations

import argparse


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="serve the deployments for `prefect deployment run`",
                                   description="Serve build-grounded-coco/local and train-tokencompose/local in "
                                               "this process (needs PREFECT_API_URL pointing at a running "
                                               "Prefect server). The standard path is prefect.yaml: see README.")
    parser.add_argument("--out", default="tokencompose-out", help="default output folder of the build deployment")
    parser.add_argument("--cron", help="also run the build on this schedule, e.g. '0 3 * * 0'")
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from tokencompose.flows.deployments import serve_deployments

    serve_deployments(out_dir=args.out, cron=args.cron)
    return 0
