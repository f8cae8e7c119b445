import importlib
import pathlib

import pytest

import lit_optim


def test_all_names_resolve() -> None:
    for name in lit_optim.__all__:
        assert getattr(lit_optim, name) is not None, name


def test_py_typed_shipped() -> None:
    from importlib.resources import files

    assert files("lit_optim").joinpath("py.typed").is_file()


def test_import_has_no_side_effects_on_logging() -> None:
    import logging

    before = list(logging.getLogger().handlers)
    importlib.reload(lit_optim)
    assert logging.getLogger().handlers == before


def test_unknown_key_error_lists_choices_and_closest() -> None:
    from lit_optim._validation import check_choice, unknown_key_error

    err = unknown_key_error("hyper-parameter", "weight_decy", ["weight_decay", "lr"])
    assert "Valid: ['lr', 'weight_decay']" in str(err)
    assert "Did you mean 'weight_decay'?" in str(err)
    with pytest.raises(ValueError, match=r"one of \['epoch', 'step'\], got 'steps'"):
        check_choice("interval", "steps", ["epoch", "step"])


_LOWER_LAYERS = ("optim", "schedules", "clipping", "monitoring")
_UPPER_MODULES = ("lit_optim.callbacks", "lit_optim.configure", "lit_optim.scheduler_config")


def _imported_modules(path: pathlib.Path) -> list[tuple[int, str]]:
    """Every module an import statement in ``path`` names, at any depth (module level or inside a function)."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


@pytest.mark.parametrize("layer", _LOWER_LAYERS)
def test_concept_folders_never_import_the_lightning_facing_layer(layer: str) -> None:


    folder = pathlib.Path(lit_optim.__file__).parent / layer
    files = sorted(folder.rglob("*.py"))
    assert files, f"lit_optim/{layer} has no modules"
    bad = [
        f"{path.relative_to(folder.parent)}:{line}: {name}"
        for path in files
        for line, name in _imported_modules(path)
        if any(name == upper or name.startswith(upper + ".") for upper in _UPPER_MODULES)
    ]
    assert not bad, f"lit_optim/{layer} must not import callbacks/configure: {bad}"


def test_import_walker_sees_function_level_imports(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from lit_optim.callbacks.stepper import ensure_stepper\n    import lit_optim.configure\n"
    )
    names = [name for _, name in _imported_modules(source)]
    assert "lit_optim.callbacks.stepper" in names
    assert "lit_optim.configure" in names


def test_public_subpackages_reexport_their_names() -> None:
    from lit_optim import callbacks, clipping, monitoring, optim, schedules

    for package in (callbacks, clipping, monitoring, optim, schedules):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
    # Everything at the top level keeps working and is the same object as in its folder.
    assert lit_optim.Cosine is schedules.Cosine
    assert lit_optim.param_groups is optim.param_groups
    assert lit_optim.clip_gradients is clipping.clip_gradients
    assert lit_optim.GradientClipping is callbacks.GradientClipping
    assert lit_optim.SpikeDetector is monitoring.SpikeDetector
    assert lit_optim.OptimizerMonitor is callbacks.OptimizerMonitor
