import importlib

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
