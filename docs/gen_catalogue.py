"""Build-time page: the curve of every schedule in the catalogue, drawn by the package's own preview.

mkdocs-gen-files runs this on every `mkdocs build`; the images are never hand-made, so a change to a schedule
changes its picture. A catalogue name without an example below fails the (strict) build.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mkdocs_gen_files

from lit_optim.schedules import SCHEDULES, TrainingLength, build_schedule, preview_schedule

#: Parameters that show each schedule's shape on a 10-epoch x 100-step run, two groups at 1e-3 and 1e-4.
EXAMPLES: dict[str, dict[str, Any]] = {
    "constant": {"warmup": "5%"},
    "linear": {"warmup": "5%", "min_lr": 0.1},
    "cosine": {"warmup": "5%", "min_lr": 0.1},
    "cosine_restarts": {"period": "3ep", "period_mult": 2, "min_lr": 0.1},
    "polynomial": {"warmup": "5%", "power": 2.0},
    "step": {"every": "3ep", "gamma": 0.5},
    "multistep": {"milestones": ["5ep", "8ep"], "gamma": 0.3},
    "exponential": {"gamma": 0.997},
    "inverse_sqrt": {"warmup": "5%"},
    "one_cycle": {},
    "wsd": {"warmup": "5%", "decay": "20%", "decay_shape": "1-sqrt"},
    "cyclic": {"up": 100, "down": 150, "mode": "triangular2", "min_lr": 0.1},
}

LENGTH = TrainingLength.from_loop(max_epochs=10, batches_per_epoch=100)
BASE_LRS = {"head": 1e-3, "backbone": 1e-4}


def _page() -> str:
    missing = sorted(set(SCHEDULES) - set(EXAMPLES))
    if missing:
        raise ValueError(f"docs/gen_catalogue.py has no example for catalogue schedules {missing}; add one.")
    lines = [
        "# Schedule catalogue",
        "",
        "Each curve is drawn at documentation build time by `preview_schedule` on a run of 10 epochs x 100",
        "optimizer steps, with two param groups (`head` at 1e-3, `backbone` at 1e-4): what you see is what",
        "`ScheduleLR` sets during training.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(SCHEDULES):
            spec = build_schedule(name, **EXAMPLES[name])
            curve = preview_schedule(spec, LENGTH, base_lrs=BASE_LRS)
            args = ", ".join(f"{k}={v!r}" for k, v in EXAMPLES[name].items())
            png = curve.plot(Path(tmp) / f"{name}.png", title=f"{name}({args})")
            with mkdocs_gen_files.open(f"images/catalogue/{name}.png", "wb") as out:
                out.write(png.read_bytes())
            lines += [f"## `{name}`", "", f"`{spec!r}`", "", f"![{name}](images/catalogue/{name}.png)", ""]
    return "\n".join(lines)


with mkdocs_gen_files.open("catalogue.md", "w") as page:
    page.write(_page())
