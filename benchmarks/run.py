"""Run every lit_optim benchmark and print one table of ratios (lit_optim time / baseline time).

Usage::

    python benchmarks/run.py            # full sizes (what the README quotes)
    python benchmarks/run.py --quick    # under a minute on 2 CPU cores
    python benchmarks/run.py --quick --json   # last line: one JSON object with every ratio

Each ratio is a median over interleaved repetitions in this one process, so slow drifts of the machine hit the
candidate and its baseline alike. A ratio at or under its target means lit_optim adds no measurable cost.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

import lightning  # noqa: F401  (imported before `quiet()`: its import resets its loggers' level)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import print_json, print_table, quiet

# module name -> {ratio key: target}
BENCHMARKS: dict[str, dict[str, float]] = {
    "bench_groups": {"groups_vs_baseline": 1.5, "layer_decay_vs_baseline": 6.0},
    "bench_schedule": {"schedule_vs_lambdalr": 1.2},
    "bench_clip": {"clip_vs_torch": 1.1},
    "bench_lr_logger": {"logger_vs_lightning": 1.0},
    "bench_stepper": {"stepper_fit_ratio": 1.03},
    "bench_stack": {"stack_vs_builtin": 1.0, "stack_vs_bare": 1.03},
    "bench_monitor": {"monitor_vs_bare": 1.03, "monitor_hooks_vs_step": 0.02, "monitor_logging_hooks_vs_step": 1.0},
    "bench_hybrid": {"hybrid_vs_by_hand": 1.05},
    "bench_hooks": {"hooks_vs_lightning": 1.0, "hooks_fit_vs_lightning": 1.0},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repetitions (< 60 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with all ratios last")
    parser.add_argument("--only", nargs="*", default=None, help="run only these benchmark modules")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or ()) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")

    torch.set_num_threads(1)
    quiet()
    ratios: dict[str, float] = {}
    rows: list[dict[str, object]] = []
    for module_name, targets in BENCHMARKS.items():
        if args.only is not None and module_name not in args.only:
            continue
        start = time.perf_counter()
        result = importlib.import_module(module_name).run(quick=args.quick)
        seconds = time.perf_counter() - start
        for key, target in targets.items():
            value = float(result[key])
            ratios[key] = value
            rows.append({"ratio": key, "value": round(value, 3), "target": f"<= {target}",
                         "ok": "yes" if value <= target else "NO", "bench seconds": round(seconds, 1)})
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), " \
              f"torch {torch.__version__}, python {platform.python_version()}"
    print_table(f"lit_optim benchmarks ({'quick' if args.quick else 'full'}) on {machine}", rows)
    if args.json:
        print_json(ratios)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
