"""Norm + clip of ~1,000 gradient tensors in named groups: ``clip_gradients`` vs ``torch.nn.utils.clip_grad_norm_``.

``clip_gradients`` also produces the norm of every param group; the ratio is its median time over torch's
(interleaved repetitions in one process). Target: <= 1.1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import interleaved_medians, print_json, print_table
from lit_optim import clip_gradients


def _setup(n_tensors: int, device: str) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]:
    g = torch.Generator().manual_seed(0)
    params: list[torch.nn.Parameter] = []
    for i in range(n_tensors):
        shape = (128, 64) if i % 2 == 0 else (128,)  # weights and biases, as in a transformer
        p = torch.nn.Parameter(torch.randn(shape, generator=g).to(device))
        p.grad = torch.randn(shape, generator=g).to(device)
        params.append(p)
    names = ["embed", "layers/decay", "layers/no_decay", "head"]
    groups = [
        {"params": params[: n_tensors // 10], "name": names[0]},
        {"params": [p for p in params[n_tensors // 10 : -10] if p.ndim == 2], "name": names[1]},
        {"params": [p for p in params[n_tensors // 10 : -10] if p.ndim == 1], "name": names[2]},
        {"params": params[-10:], "name": names[3]},
    ]
    return torch.optim.SGD(groups, lr=0.1), params


def run(quick: bool = False) -> dict[str, float]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n_tensors = 1000
    repeats = 20 if quick else 200
    opt, params = _setup(n_tensors, device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def ours() -> None:
        clip_gradients(opt, max_norm=1.0)
        sync()

    def baseline() -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
        sync()

    times = interleaved_medians({"lit_optim": ours, "torch": baseline}, repeats=repeats, warmup=3)
    ratio = times["lit_optim"] / times["torch"]
    print_table(
        f"norm + clip, {n_tensors} tensors in 4 named groups ({device})",
        [
            {"impl": "lit_optim.clip_gradients (+ per-group norms)", "median_ms": times["lit_optim"] * 1e3},
            {"impl": "torch.nn.utils.clip_grad_norm_", "median_ms": times["torch"] * 1e3},
        ],
    )
    return {"clip_vs_torch": ratio}


if __name__ == "__main__":
    print_json(run(quick="--quick" in sys.argv))
