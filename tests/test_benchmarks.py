"""The benchmark runner works from a fresh install: ``--quick --json`` ends with one JSON object of ratios.

Timings are never asserted (they belong to ``benchmarks/``); only that every ratio is there and positive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEYS = {
    "stack_vs_builtin",
    "stack_vs_bare",
    "groups_vs_baseline",
    "schedule_vs_lambdalr",
    "clip_vs_torch",
    "logger_vs_lightning",
    "stepper_fit_ratio",
    "monitor_vs_bare",
    "monitor_hooks_vs_step",
    "monitor_logging_hooks_vs_step",
    "hybrid_vs_by_hand",
    "hooks_vs_lightning",
    "hooks_fit_vs_lightning",
}


def test_quick_run_prints_every_ratio_as_json_last(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ratios = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(ratios) >= KEYS
    assert all(isinstance(v, float) and v > 0 for v in ratios.values())
    assert "stack_vs_builtin" in proc.stdout.split("\n{")[0]  # the readable table comes first
