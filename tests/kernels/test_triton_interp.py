"""Each Triton kernel against the pure-torch reference, in the CPU interpreter.

The checks live in ``_interp_cases.py`` and run in two child processes with
TRITON_INTERPRET=1 (the flag is process-wide and read when kernels are decorated, so it
must not be set in this test process); each case becomes one test here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _interp_cases  # noqa: E402  (case names only; imports neither triton nor the flag)

_WORKER = Path(__file__).with_name("_interp_cases.py")
_SHARDS = 2
_TIMEOUT_S = 600


def _triton_importable() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a stubbed-out or broken triton counts as absent
        return False


@pytest.fixture(scope="module")
def interp_results() -> dict[str, dict]:
    if not _triton_importable():
        pytest.skip("triton is not installed; the interpreter-mode kernel tests need it (pip install triton)")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    procs = [
        subprocess.Popen(
            [sys.executable, str(_WORKER), str(i), str(_SHARDS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            cwd=str(_WORKER.parents[2]),
        )
        for i in range(_SHARDS)
    ]
    results: dict[str, dict] = {}
    errors = []
    for p in procs:
        out, err = p.communicate(timeout=_TIMEOUT_S)
        for line in out.splitlines():
            if line.startswith("CASE "):
                rec = json.loads(line[5:])
                results[rec["name"]] = rec
        if p.returncode != 0:
            errors.append(f"worker exited {p.returncode}: {err[-2000:]}")
    if errors and not results:
        pytest.fail("\n".join(errors))
    results["__stderr__"] = {"detail": "\n".join(errors)}
    return results


def test_flag_not_leaked_into_this_process() -> None:
    # the parent must stay in compiled mode for every other test folder
    assert os.environ.get("TRITON_INTERPRET") in (None, "", "0")


@pytest.mark.parametrize("name", sorted(_interp_cases.CASES))
def test_kernel_matches_reference(name: str, interp_results: dict[str, dict]) -> None:
    rec = interp_results.get(name)
    if rec is None:
        pytest.fail(f"case {name} produced no result; worker stderr:\n{interp_results['__stderr__']['detail']}")
    assert rec["ok"], rec["detail"]
