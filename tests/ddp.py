"""Run a script under 2-process DDP on CPU (gloo) and collect what each rank wrote.

Lightning's ``strategy="ddp"`` re-launches the script for rank 1, so the script must be a file. Each rank
writes ``rank{global_rank}.json`` into the folder passed as ``sys.argv[1]``; ``run_ddp`` returns those
dicts ordered by rank. Kept out of pytest's process so that spawn/pickling and process groups cannot leak
between tests.

Example script body::

    import json, sys, lightning as L
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", ...)
    trainer.fit(model)
    out = {"lr": ...}
    (Path(sys.argv[1]) / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Appended to every script: tear the process group down before the interpreter exits. Left to interpreter
# shutdown, gloo's background threads can outlive it and abort the process ("terminate called without an
# active exception", exit -6) after the work is done -- seen on a loaded 2-core machine.
_TEARDOWN = """

import torch.distributed as _dist
if _dist.is_available() and _dist.is_initialized():
    _dist.destroy_process_group()
"""


def run_ddp(script: str, tmp_path: Path, timeout: float = 240) -> list[dict[str, Any]]:
    """Write ``script`` to ``tmp_path``, run it with 2 CPU processes, return each rank's JSON output."""
    path = tmp_path / "ddp_script.py"
    path.write_text(textwrap.dedent(script) + _TEARDOWN)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    env.pop("MASTER_PORT", None)
    proc = subprocess.run(
        [sys.executable, str(path), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"DDP script failed ({proc.returncode}).\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    return results
