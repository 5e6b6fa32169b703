"""`tokencompose view DIR`: browse a built shard set in a local web viewer."""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path


def port_number(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (1-65535)")
    return value


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("view", help="browse a built shard set in a local web viewer",
                                   description="Serve a local web viewer for the shards of build-grounded-coco.")
    parser.add_argument("dir", type=Path, metavar="DIR", help="the build output folder (or its shards/ folder)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=port_number, default=8765, help="port (default 8765)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="a training run folder, an exported pipeline, a diffusers model folder or a tokenizer "
                             "folder: the sample page's tokens, crop size and attention map sides follow it (default: "
                             "CLIP's vocabulary bundled with open_clip, SD1.4's 512 px and 8-64 maps)")
    parser.set_defaults(handler=run_view)


def port_problem(host: str, port: int) -> str | None:
    """Why the viewer could not listen on host:port, checked before anything is printed or loaded."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as error:
        return f"cannot listen on {host}:{port}: {error.strerror or error}"
    return None


def run_view(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    if not folder.is_dir():
        print(f"{folder} is not a folder", file=sys.stderr)
        return 2
    problem = port_problem(args.host, args.port)
    if problem:
        print(f"{problem} (choose another with --port)", file=sys.stderr)
        return 2
    import uvicorn

    from tokencompose.viewer.app import LOOPBACK_HOSTS, create_app

    loopback = args.host in LOOPBACK_HOSTS
    if not loopback:
        print(f"warning: listening on {args.host}: anyone who can reach this address can browse the dataset",
              file=sys.stderr)
    app = create_app(folder, background_scan=True, allowed_hosts=list(LOOPBACK_HOSTS) if loopback else None,
                     tokenizer_dir=args.tokenizer)
    catalog = app.state.catalog
    if not catalog.shards:
        print(f"{folder} holds no shards (expected shards/*.tar and index/*.json from build-grounded-coco)",
              file=sys.stderr)
        return 2
    print(f"viewer for {len(catalog.shards)} shard(s) at http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
