"""The CLI run in a fresh interpreter, as a user starts it: its exit code, stderr, the heavy modules it
loaded and the CPU seconds it used (CPU, not wall time: on a shared machine wall time says more about the
neighbours than about the command)."""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY_MODULES = ("torch", "prefect", "diffusers", "transformers", "webdataset")

_PROBE = """
import contextlib, io, json, resource, sys
from tokencompose.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err):
    try:
        code = main(json.loads(sys.argv[1]))
    except SystemExit as exit_:
        code = exit_.code
usage = resource.getrusage(resource.RUSAGE_SELF)
heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
print(json.dumps({"code": code, "stderr": err.getvalue(), "heavy": heavy, "cpu": usage.ru_utime + usage.ru_stime}))
"""


def run_cli(*argv: str) -> dict:
    """``tokencompose *argv``: {"code", "stderr", "heavy", "cpu"}."""
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(list(argv)), json.dumps(HEAVY_MODULES)],
                          capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
