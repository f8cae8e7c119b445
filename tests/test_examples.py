"""Every example in its shortened form (``--fast``), plus the char-GPT pieces and the LightningCLI config."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from lit_optim import (
    Cosine,
    GradientClipping,
    LearningRateLogger,
    Linear,
    Schedule,
    ScheduleLR,
    TrainingLength,
    WarmupStableDecay,
)
from lit_optim.schedules._config import spec_from_config
from lit_optim.schedules.scheduler import as_schedule

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` under a unique module name (the examples folder is not a package)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # the examples import `char_gpt` as a sibling
    module_name = f"lit_optim_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def warmup_cosine(step: int, total: int, warmup: int, min_lr: float) -> float:
    """Closed form of ``Cosine(warmup=..., min_lr=...)``: linear warmup from 0, then half-cosine to ``min_lr``."""
    if step < warmup:
        return step / warmup
    progress = min((step - warmup) / (total - warmup), 1.0)
    return min_lr + (1.0 - min_lr) * (1.0 + math.cos(math.pi * progress)) / 2.0


def read_csv(path: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key not in ("step", "epoch") and value:
                    series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


# --- the corpus and the model ------------------------------------------------------------------------------


def test_corpus_is_ascii_text_of_the_documented_size() -> None:
    char_gpt = load_example("char_gpt")
    text = char_gpt.load_corpus()
    assert 50_000 <= len(text.encode()) <= 150_000
    assert text.isascii()
    assert "We the People of the United States" in text
    assert "four score and seven years ago" in text.lower()
    readme = (EXAMPLES / "data" / "README.md").read_text()
    assert "public domain" in readme
    for name in char_gpt.CORPUS_FILES:
        assert f"`{name}`" in readme


def test_char_vocab_round_trips() -> None:
    char_gpt = load_example("char_gpt")
    vocab = char_gpt.CharVocab("hello world")
    assert vocab.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert vocab.encode("hold").tolist() == [3, 5, 4, 1]
    assert vocab.decode(vocab.encode("world hello")) == "world hello"


def test_data_module_windows_are_deterministic_shifted_and_split() -> None:
    char_gpt = load_example("char_gpt")
    data = char_gpt.CharDataModule(block_size=16, batch_size=4, train_batches=3, val_batches=2, seed=7)
    data.setup("fit")
    again = char_gpt.CharDataModule(block_size=16, batch_size=4, train_batches=3, val_batches=2, seed=7)
    again.setup("fit")
    assert len(data.train_set) == 12
    assert len(data.val_set) == 8
    assert torch.equal(data.train_set.starts, again.train_set.starts)
    x, y = data.train_set[0]
    assert x.shape == y.shape == (16,)
    assert torch.equal(x[1:], y[:-1])  # the target is the input shifted by one character
    # Every 10th 2000-character chunk is validation text; the two splits cover the corpus exactly once.
    total = len(data.text)
    val_chars = sum(min(2000, total - start) for start in range(18_000, total, 20_000))
    assert data.val_set.data.numel() == val_chars
    assert data.train_set.data.numel() + data.val_set.data.numel() == total


def test_char_gpt_ties_the_head_and_is_causal() -> None:
    char_gpt = load_example("char_gpt")
    model = char_gpt.CharGPT(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)
    assert model.lm_head.weight is model.tok_emb.weight
    assert isinstance(model.blocks, torch.nn.ModuleList)
    idx = torch.randint(0, 20, (1, 8))
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % 20
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[0, :5], b[0, :5])  # a later token never changes earlier predictions
    assert not torch.equal(a[0, 5:], b[0, 5:])


def test_char_gpt_bad_arguments_raise() -> None:
    char_gpt = load_example("char_gpt")
    with pytest.raises(ValueError, match=r"`n_embd` \(30\) must be divisible by `n_head` \(4\)"):
        char_gpt.CharGPT(vocab_size=10, n_embd=30, n_head=4)
    with pytest.raises(ValueError, match=r"`val_fraction` must be in \(0, 1\), got 1.0"):
        char_gpt.CharDataModule(val_fraction=1.0)
    with pytest.raises(ValueError, match=r"`data` has 5 tokens; it needs more than block_size \+ 1 = 9"):
        char_gpt.RandomWindows(torch.arange(5), block_size=8, num_windows=1, seed=0)


# --- the examples, shortened -------------------------------------------------------------------------------


def test_train_char_gpt_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("train_char_gpt")
    result = example.main(["--fast", "--out", str(tmp_path)])
    out = capsys.readouterr().out

    # The loss clearly drops: from ~ln(76) = 4.33 at initialisation to well under 3 in 60 steps.
    val = [v for _, v in result["series"]["val_loss"]]
    assert len(val) == 3
    assert val[-1] < val[0] - 0.25
    assert val[-1] < math.log(76) - 1.3

    # The group table and the files.
    assert "head/decay" in out
    assert "no_decay" in out
    assert result["metrics_csv"].is_file()
    assert result["metrics_csv"].parent.parent == tmp_path / "char_gpt"
    assert result["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(result["png"]) in out

    # What the logger received: the warmup + cosine lr of each named group, at the step that used it.
    series = read_csv(result["metrics_csv"])
    assert result["steps"] == 60
    lr = dict(series["lr/decay"])
    assert sorted(lr) == [0, *range(4, 60, 5)]  # step 0, then Lightning's rows: (step + 1) % 5 == 0
    for step, value in lr.items():
        expected = 3e-3 * warmup_cosine(step, total=60, warmup=6, min_lr=0.1)
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert dict(series["lr/head/decay"])[step] == pytest.approx(0.5 * expected, rel=1e-9, abs=1e-12)
        assert dict(series["lr/no_decay"])[step] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert {v for _, v in series["weight_decay/decay"]} == {0.1}
    assert {v for _, v in series["weight_decay/no_decay"]} == {0.0}
    norms = series["grad_clip/norm"]
    assert [s for s, _ in norms] == list(range(4, 60, 5))
    assert all(math.isfinite(v) and v > 0 for _, v in norms)


def test_train_char_gpt_with_muon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("train_char_gpt")
    result = example.main(["--fast", "--optimizer", "muon", "--max-steps", "20", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert result["metrics_csv"].parent.parent == tmp_path / "char_gpt_muon"
    table = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("muon/", "adamw/"))}
    # 2 blocks x (qkv, proj, mlp.0, mlp.2) go to Muon; the tied embedding/head, pos_emb, norms, biases to AdamW
    assert {name: row[1] for name, row in table.items()} == {
        "muon/decay": "8", "adamw/head/decay": "1", "adamw/decay": "1", "adamw/no_decay": "18",
    }  # fmt: skip
    series = read_csv(result["metrics_csv"])
    for step, value in series["lr/muon/decay"]:  # one base lr for both halves, the head's at half of it
        expected = 3e-3 * warmup_cosine(step, total=20, warmup=2, min_lr=0.1)
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert dict(series["lr/adamw/decay"])[step] == value
        assert dict(series["lr/adamw/head/decay"])[step] == pytest.approx(0.5 * value, rel=1e-12)
    assert {v for _, v in series["momentum/muon/decay"]} == {0.95}
    assert {v for _, v in series["beta2/adamw/decay"]} == {0.95}
    val = [v for _, v in series["val_loss"]]
    assert val[-1] < math.log(76) - 0.8  # it learns: ~4.33 at initialisation, ~3.35 after these 20 steps


def test_finetune_fast(tmp_path: Path) -> None:
    example = load_example("finetune")
    result = example.main(["--fast", "--out", str(tmp_path)])
    trainer, model = result["trainer"], result["model"]
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    backbone = {f"backbone/layer_{i:02d}/{kind}" for i in range(5) for kind in ("decay", "no_decay")}
    assert set(groups) == {"head/decay", "head/no_decay", "backbone/layer_05/no_decay", *backbone}

    # Layer-wise decay: layer i of 5 gets 0.7 ** (5 - i) of the top layer's lr, then all decay together.
    top = groups["backbone/layer_05/no_decay"]["lr"]
    for i in range(5):
        for kind in ("decay", "no_decay"):
            group = groups[f"backbone/layer_{i:02d}/{kind}"]
            assert group["applied_lr_scale"] == pytest.approx(0.7 ** (5 - i))
            assert group["lr"] == pytest.approx(top * 0.7 ** (5 - i))

    # The backbone joined the schedule at step k (the start of epoch 1) with lr 1e-3, then followed it.
    k = trainer.num_training_batches
    total = 2 * k
    assert trainer.global_step == total
    f = [warmup_cosine(s, total, warmup=math.ceil(total / 10), min_lr=0.05) for s in range(total + 1)]  # 10%: up
    assert top == pytest.approx(1e-3 * f[total] / f[k])
    assert groups["head/decay"]["lr"] == pytest.approx(3e-3 * f[total])

    # Frozen during epoch 0: its lr is first logged at step k; then every backbone tensor was trained.
    series = read_csv(result["log_dir"] / "metrics.csv")
    assert min(s for s, _ in series["lr/backbone/layer_05/no_decay"]) == k
    assert min(s for s, _ in series["lr/head/decay"]) == 0
    for name, tensor in model.backbone.state_dict().items():
        assert not torch.equal(tensor, result["pretrained"][name]), name


def test_finetune_resumes_exactly_after_the_unfreeze(tmp_path: Path) -> None:
    """Stopped after the unfreeze epoch and resumed, the run matches one that never stopped: same weights, same
    named groups and lrs, and a trainable backbone (Lightning re-freezes it on resume, issue #21901)."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    example = load_example("finetune")
    _, task = example.make_tasks(n=512)
    pretrained = example.Backbone().state_dict()
    loader = DataLoader(task, batch_size=64)  # 8 batches per epoch, fixed order

    class StopAfterEpoch1(Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            trainer.should_stop = trainer.current_epoch == 1

    def run(*callbacks: Callback, ckpt_path: Path | None = None) -> tuple[L.Trainer, Any]:
        torch.manual_seed(1)  # the same new head every time
        backbone = example.Backbone()
        backbone.load_state_dict(pretrained)
        model = example.FineTune(backbone)
        trainer = L.Trainer(
            accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0,
            callbacks=[example.UnfreezeBackbone(unfreeze_at_epoch=1), *callbacks],
        )
        trainer.fit(model, loader, DataLoader(task, batch_size=512), ckpt_path=ckpt_path)
        return trainer, model

    straight, straight_model = run()
    stopped, _ = run(StopAfterEpoch1())
    assert stopped.global_step == 16
    stopped.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed, resumed_model = run(ckpt_path=tmp_path / "epoch1.ckpt")

    assert resumed.global_step == straight.global_step == 24
    assert all(p.requires_grad for p in resumed_model.backbone.parameters())
    groups = [(g["name"], g["lr"], len(g["params"])) for g in resumed.optimizers[0].param_groups]
    assert groups == [(g["name"], g["lr"], len(g["params"])) for g in straight.optimizers[0].param_groups]
    for (name, a), b in zip(straight_model.named_parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_warmup_plateau_fast(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    example = load_example("warmup_plateau")
    result = example.main(["--fast"])
    out = capsys.readouterr().out
    state = result["scheduler"].state_dict()
    assert state["evaluations"] == 8  # one plateau step per validation run (per epoch)
    assert state["last_epoch"] == result["trainer"].global_step == 8 * 16  # the warmup counts optimizer steps
    assert result["reductions"] >= 1
    assert result["lr"] == pytest.approx(0.05 * 0.5 ** result["reductions"])
    assert f"reduction {result['reductions']})." in caplog.text  # SchedulerStepper's line per reduction
    # The first epoch ran inside the 20-step warmup: after 16 steps the lr was 16/20 of 0.05.
    assert "epoch   0  step   16" in out
    assert "lr 0.04\n" in out


@pytest.mark.ddp
def test_ddp_example_fast(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MASTER_PORT", None)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "ddp.py"), "--fast", "--out", str(tmp_path), "--logs", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1]
    # 8 batches of windows split over 2 ranks: 4 per rank per epoch, 2 epochs; the schedule resolved to that.
    for summary in ranks:
        assert summary["world_size"] == 2
        assert summary["num_training_batches"] == 4
        assert summary["total_steps"] == summary["global_step"] == 8
        assert summary["lrs"] == {"decay": pytest.approx(3e-4), "no_decay": pytest.approx(3e-4)}  # min_lr 0.1
    assert ranks[0]["weight_sum"] == ranks[1]["weight_sum"]  # identical weights on both ranks
    assert ranks[0]["val_loss"] == ranks[1]["val_loss"]
    # Rank 0 alone wrote the logs: one run folder, lr per group at step 0 and Lightning's rows (1, 3, 5, 7), like
    # the clipping norms.
    assert [p.name for p in (tmp_path / "ddp").iterdir()] == ["version_0"]
    series = read_csv(tmp_path / "ddp" / "version_0" / "metrics.csv")
    assert [s for s, _ in series["lr/decay"]] == [0, 1, 3, 5, 7]
    assert [s for s, _ in series["grad_clip/norm"]] == [1, 3, 5, 7]


# --- LightningCLI ------------------------------------------------------------------------------------------


@pytest.fixture
def no_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when given `args` while pytest's own arguments are in `sys.argv`."""
    monkeypatch.setattr(sys, "argv", ["cli.py"])


def cli_args(tmp_path: Path, *extra: str) -> list[str]:
    cli = load_example("cli")
    return [
        "--config", str(cli.CONFIG),
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_model_summary=false",
        "--trainer.enable_checkpointing=false",
        *extra,
    ]


@pytest.mark.usefixtures("no_argv")
def test_cli_config_runs_fit_with_optimizer_schedule_and_callbacks(tmp_path: Path) -> None:
    cli_module = load_example("cli")
    cli = cli_module.cli_main(
        cli_args(tmp_path, "--trainer.max_steps=10", "--trainer.val_check_interval=5", "--data.train_batches=5",
                 "--data.val_batches=1", "--model.n_layer=1"),
        run=False,
    )
    trainer, model = cli.trainer, cli.model
    spec = {"class_path": "lit_optim.Cosine", "init_args": {"warmup": "10%", "min_lr": 0.1, "min_lr_abs": None,
                                                            "decay_end": None, "cycles": 0.5}}
    assert model.hparams["scheduler"] == spec  # LightningCLI keeps the config; OptimizerMixin builds the spec
    assert spec_from_config(spec) == Cosine(warmup="10%", min_lr=0.1)
    assert model.hparams["vocab_size"] == cli.datamodule.vocab_size == 76  # linked from the data module
    [clipping] = [c for c in trainer.callbacks if isinstance(c, GradientClipping)]
    assert (clipping.mode, clipping.max_norm) == ("norm", 1.0)
    assert any(isinstance(c, LearningRateLogger) for c in trainer.callbacks)

    trainer.fit(model, datamodule=cli.datamodule)

    optimizer = trainer.optimizers[0]
    assert type(optimizer).__name__ == "AdamW"
    rows = [(g["name"], g["initial_lr"], g["weight_decay"], tuple(g["betas"])) for g in optimizer.param_groups]
    assert rows == [
        ("head/decay", pytest.approx(1.5e-3), 0.1, (0.9, 0.95)),
        ("decay", 3e-3, 0.1, (0.9, 0.95)),
        ("no_decay", 3e-3, 0.0, (0.9, 0.95)),
    ]
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, ScheduleLR)
    assert scheduler.total_steps == 10
    assert scheduler.last_epoch == 10
    assert isinstance(scheduler.schedule, Cosine)
    assert scheduler.schedule.min_lr == 0.1
    series = read_csv(tmp_path / "char_gpt_cli" / "version_0" / "metrics.csv")
    assert dict(series["lr/head/decay"])[4] == pytest.approx(1.5e-3 * warmup_cosine(4, 10, 1, 0.1))
    assert "grad_clip/norm" in series

    # The checkpoint holds plain hparams (torch's weights_only load works) and the restored model fits the same.
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=True)["hyper_parameters"]["scheduler"]["class_path"] == "lit_optim.Cosine"
    restored = cli_module.CLICharGPT.load_from_checkpoint(path)
    assert spec_from_config(restored.hparams["scheduler"]) == Cosine(warmup="10%", min_lr=0.1)
    assert restored.hparams["n_layer"] == 1
    assert torch.equal(restored.tok_emb.weight, model.tok_emb.weight)


@pytest.mark.usefixtures("no_argv")
def test_cli_command_line_overrides_optimizer_settings(tmp_path: Path) -> None:
    cli_module = load_example("cli")
    cli = cli_module.cli_main(
        cli_args(tmp_path, "--model.lr=0.01", "--model.weight_decay=0.05", "--model.optimizer=sgd",
                 "--model.optimizer_kwargs={momentum: 0.8}", "--model.scheduler=null", "--model.n_layer=1"),
        run=False,
    )
    config = cli.model.configure_optimizers()
    assert set(config) == {"optimizer"}  # no schedule: a constant lr
    optimizer = config["optimizer"]
    assert type(optimizer).__name__ == "SGD"
    rows = [(g["name"], g["lr"], g["weight_decay"], g["momentum"]) for g in optimizer.param_groups]
    assert rows == [("head/decay", 0.005, 0.05, 0.8), ("decay", 0.01, 0.05, 0.8), ("no_decay", 0.01, 0.0, 0.8)]


@pytest.mark.usefixtures("no_argv")
def test_cli_configures_muon_with_adamw_for_the_rest(tmp_path: Path) -> None:
    cli_module = load_example("cli")
    cli = cli_module.cli_main(
        cli_args(tmp_path, "--model.optimizer=muon", "--model.optimizer_kwargs={momentum: 0.9}",
                 "--model.fallback_kwargs={betas: [0.8, 0.9]}", "--model.scheduler=null", "--model.n_layer=1"),
        run=False,
    )
    optimizer = cli.model.configure_optimizers()["optimizer"]
    assert type(optimizer).__name__ == "HybridOptimizer"
    rows = [(g["name"], g["lr"], g.get("momentum"), g.get("betas")) for g in optimizer.param_groups]
    assert rows == [
        ("muon/decay", 3e-3, 0.9, None),
        ("adamw/head/decay", 1.5e-3, None, (0.8, 0.9)),
        ("adamw/decay", 3e-3, None, (0.8, 0.9)),
        ("adamw/no_decay", 3e-3, None, (0.8, 0.9)),
    ]


@pytest.mark.usefixtures("no_argv")
def test_cli_chooses_the_schedule_by_class_path(tmp_path: Path) -> None:
    cli_module = load_example("cli")
    args = cli_args(tmp_path, "--model.scheduler=lit_optim.Linear", "--model.scheduler.min_lr=0.2", "--model.n_layer=1")
    cli = cli_module.cli_main(args, run=False)
    # The YAML's `warmup: 10%` carries over to the new class; `min_lr` comes from the command line.
    assert spec_from_config(cli.model.hparams["scheduler"]) == Linear(warmup="10%", min_lr=0.2)


@pytest.mark.usefixtures("no_argv")
def test_cli_rejects_an_unknown_schedule_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_module = load_example("cli")
    with pytest.raises(SystemExit):
        cli_module.cli_main(cli_args(tmp_path, "--model.scheduler=lit_optim.Cosinus"), run=False)
    assert "lit_optim.Cosinus" in capsys.readouterr().err


@pytest.mark.usefixtures("no_argv")
@pytest.mark.parametrize(
    ("yaml_value", "expected"),
    [
        ("cosine", Cosine()),
        ("{name: cosine, warmup: {duration: 25%, shape: cosine}, min_lr: 0.1}",
         Cosine(warmup={"duration": "25%", "shape": "cosine"}, min_lr=0.1)),
        ("{class_path: lit_optim.WarmupStableDecay, init_args: {warmup: 1, stable: 1, decay: 2}}",
         WarmupStableDecay(warmup=1, stable=1, decay=2, min_lr=0.1)),  # min_lr: kept from the base config
    ],
    ids=["catalogue-name", "name-mapping", "class_path"],
)
def test_cli_accepts_every_documented_schedule_form(tmp_path: Path, yaml_value: str, expected: Schedule) -> None:
    # each form as a YAML config file holds it, then fitted: the schedule the Trainer runs is the one written
    config = tmp_path / "schedule.yaml"
    config.write_text(f"model:\n  scheduler: {yaml_value}\n")
    cli_module = load_example("cli")
    args = cli_args(tmp_path, "--config", str(config), "--trainer.max_steps=4", "--trainer.limit_val_batches=0",
                    "--data.train_batches=4", "--model.n_layer=1")
    cli = cli_module.cli_main(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, ScheduleLR)
    assert scheduler.schedule == expected.resolve(TrainingLength(4))
    assert scheduler.last_epoch == 4
    path = tmp_path / "last.ckpt"  # and the checkpoint holds plain data that loads with weights_only=True
    cli.trainer.save_checkpoint(path)
    stored = torch.load(path, weights_only=True)["hyper_parameters"]["scheduler"]
    restored = cli_module.CLICharGPT.load_from_checkpoint(path).hparams["scheduler"]
    assert as_schedule(spec_from_config(restored)) == as_schedule(spec_from_config(stored)) == expected


@pytest.mark.usefixtures("no_argv")
def test_cli_rejects_an_unknown_schedule_name_when_parsing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_module = load_example("cli")
    with pytest.raises(SystemExit):
        cli_module.cli_main(cli_args(tmp_path, "--model.scheduler=cosinus"), run=False)
    err = capsys.readouterr().err
    assert "cosinus" in err
    assert "'cosine', 'cosine_restarts', 'cyclic'" in err  # the catalogue names, from `ScheduleName`
