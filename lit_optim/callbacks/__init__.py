"""Lightning callbacks of lit_optim."""

__all__: list[str] = []
