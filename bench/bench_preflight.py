"""How long each command takes to refuse a configuration it cannot run: the whole process, from start
to its one-line answer (what a user waits for), on this machine.

Each case is a real command line with one configuration problem that the command's preflight must
catch before any work (missing weights, folders, files). The figure is the median wall time of
--repeats runs of a fresh process; the bench fails when a case exits 0, takes longer than the target,
or answers with a traceback (a list of problems, one line each, is the expected answer).

    python bench/bench_preflight.py                       # writes bench/results/preflight.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 2.0


def cases(scratch: Path) -> dict[str, list[str]]:
    """Case name -> arguments of `tokencompose`; every path under scratch is absent or empty."""
    empty_models = scratch / "models"
    empty_models.mkdir()
    missing = scratch / "missing"
    return {
        "build --profile paper, weights missing": [
            "build", "--demo", "--profile", "paper", "--models-dir", str(empty_models), "--out", str(scratch / "b1")],
        "build, source folders missing": [
            "build", "--images-dir", str(missing / "train2017"), "--captions-json", str(missing / "captions.json"),
            "--instances-json", str(missing / "instances.json"), "--out", str(scratch / "b2")],
        "train, model folder missing": [
            "train", "--pretrained-model", str(missing / "sd"), "--shards", str(missing / "shard-{000000..000001}.tar"),
            "--output-dir", str(scratch / "t")],
        "evaluate, model folder missing": [
            "evaluate", "--out", str(scratch / "e"), "--model", str(missing / "sd"), "--label", "a"],
        "attention, model folder missing": [
            "attention", "--model", str(missing / "sd"), "--prompt", "a photo of a cat and a dog"],
        "retrain, base model missing": [
            "retrain", "--base-model", str(missing / "sd"), "--images-dir", str(missing / "images"),
            "--captions-json", str(missing / "captions.json"), "--out", str(scratch / "r"),
            "--gate.fid-tolerance", "null", "--gate.clip-tolerance", "null"],
        "retrain, gate judging FID with no FID set": [
            "retrain", "--base-model", str(missing / "sd"), "--images-dir", str(missing / "images"),
            "--captions-json", str(missing / "captions.json"), "--out", str(scratch / "r")],
        "view, folder missing": ["view", str(missing / "dataset")],
    }


def run_once(args: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU (user + system) seconds of one fresh process, and what it answered."""
    command = [str(Path(sys.executable).with_name("tokencompose")), *args]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENCOMPOSE_MODELS": ""})
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return wall, cpu, done


def measure(repeats: int) -> dict[str, dict]:
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-preflight-") as scratch:
        for name, args in cases(Path(scratch)).items():
            times, cpu_times, done = [], [], None
            for _ in range(repeats):
                seconds, cpu, done = run_once(args)
                times.append(seconds)
                cpu_times.append(cpu)
            assert done is not None
            message = [line for line in done.stderr.splitlines() if line.strip()]
            results[name] = {"command": "tokencompose " + " ".join(a.replace(scratch, "$TMP") for a in args),
                             "median_s": round(statistics.median(times), 2), "max_s": round(max(times), 2),
                             "median_cpu_s": round(statistics.median(cpu_times), 2),
                             "exit_code": done.returncode, "stderr_lines": len(message),
                             "traceback": "Traceback (most recent call last)" in done.stderr,
                             "message": " | ".join(message)[:400]}
    return results


def cpu_model() -> str:
    """The processor's name as the kernel reports it (platform.processor() is often empty on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "preflight.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    measured = measure(args.repeats)
    problems = [f"{name}: {why}" for name, case in measured.items() for why in (
        "exited 0" if case["exit_code"] == 0 else "",
        f"{case['median_s']} s > {TARGET_SECONDS} s" if case["median_s"] > TARGET_SECONDS else "",
        "a traceback on stderr" if case["traceback"] else "") if why]
    for name, case in measured.items():
        print(f"{case['median_s']:6.2f} s wall {case['median_cpu_s']:6.2f} s CPU  {name}: {case['message'][:120]}")
    results = {"machine": f"{cpu_model()}, {os.cpu_count()} cores, CPU only (no GPU involved)",
               "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
               "repeats": args.repeats, "target_s": TARGET_SECONDS, "cases": measured, "problems": problems,
               "command": "python bench/bench_preflight.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(problems) or f"every preflight answered in < {TARGET_SECONDS} s with one line")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
