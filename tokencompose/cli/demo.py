"""`tokencompose demo world`: the synthetic world end to end (generate, build, train plain and grounded,
evaluate both, report), into --out; prints where the report is."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="see the method work: the synthetic world, plain vs grounded, in minutes on a CPU",
        description="Run a demo end to end. 'world': generate the synthetic compositional world, build it, train a "
                    "tiny Stable Diffusion with L_LDM only and with the grounding losses, evaluate both (MultiGen "
                    "with the world's exact detector, attention-mask IoU) and write report.md. The protocol is "
                    "fixed (docs/world.md); a second run reuses the finished steps in --out.")
    parser.add_argument("name", choices=["world"], help="which demo")
    parser.add_argument("--out", type=Path, default=Path("out/world"), help="output folder (default out/world)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a shared machine)")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from tokencompose.tasks.models.preflight import output_problems

    if args.threads < 1:
        print(f"cannot start: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    problems = output_problems(args.out, "--out")
    if problems:
        print("cannot start:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 2
    from tokencompose.tasks.demo.world import WorldProtocol, run_world_demo

    report = run_world_demo(args.out, WorldProtocol(threads=args.threads))
    print(f"report: {report}")
    return 0
