"""`tokencompose demo world`: the synthetic world end to end (generate, build, train plain and grounded,
evaluate both, report), into --out; prints where the report is. `tokencompose demo retrain`: one round of
the scheduled retraining on that world (grow it, train a candidate, gate, registry), in the same --out."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="see the method work: the synthetic world, plain vs grounded, in minutes on a CPU",
        description="Run a demo end to end. 'world': generate the synthetic compositional world, build it, train a "
                    "tiny Stable Diffusion with L_LDM only and with the grounding losses, evaluate both (MultiGen "
                    "with the world's exact detector, attention-mask IoU and specificity) and write report.md. "
                    "'retrain': after 'world' in the same --out, one round of the scheduled retraining on it: the "
                    "world grows, a candidate trains from the current model, the promotion gate decides, the "
                    "registry records it (retrain.md). The protocol is fixed (docs/world.md); a second 'world' run "
                    "reuses the finished steps in --out, a second 'retrain' runs the next round.")
    parser.add_argument("name", choices=["world", "retrain"], help="which demo")
    parser.add_argument("--out", type=Path, default=Path("out/world"), help="output folder (default out/world)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a shared machine)")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from tokencompose.tasks.models.preflight import output_problems

    if args.threads < 1:
        print(f"cannot start: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    problems = output_problems(args.out, "--out")
    if args.name == "retrain" and not problems:
        from tokencompose.tasks.demo.world_retrain import retrain_problems

        problems = retrain_problems(args.out)
    if problems:
        print("cannot start:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 2
    from tokencompose.tasks.demo.world import WorldProtocol, run_world_demo

    protocol = WorldProtocol(threads=args.threads)
    if args.name == "retrain":
        from tokencompose.tasks.demo.world_retrain import run_world_retrain

        summary = run_world_retrain(args.out, protocol)
        print(json.dumps(summary, indent=1, default=str))
        return 1 if summary.get("status") == "failed" else 0
    report = run_world_demo(args.out, protocol)
    print(f"report: {report}")
    return 0
