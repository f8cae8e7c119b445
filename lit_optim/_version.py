"""The one source of the package version (read by pyproject.toml and re-exported as ``lit_optim.__version__``)."""

__all__ = ["__version__"]

__version__ = "0.1.0.dev0"
