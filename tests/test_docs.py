"""The documentation's code runs: every runnable ```python block of README.md and docs/*.md."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.docs_snippets import ROOT, marked, pages, snippets

_PAGES = pages()

#: What every docs block may assume, as Lightning's own docs do.
PRELUDE = "import lightning as L\nimport torch\nfrom torch import nn\n"


@pytest.mark.parametrize("page", _PAGES, ids=[p.relative_to(ROOT).as_posix() for p in _PAGES])
def test_page_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [s for s in snippets(page) if s.runnable]
    if not blocks:
        pytest.skip(f"{page.name} has no runnable python block")
    monkeypatch.chdir(tmp_path)  # snippets write files (lr_curve.png, runs/...) into a scratch folder
    namespace: dict[str, object] = {"__name__": "__docs__"}
    exec(PRELUDE, namespace)
    for block in blocks:
        try:
            exec(compile(block.code, f"{block.page}:{block.line}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"the python block at {block.page}:{block.line} failed: {err!r}") from err


def test_fragments_are_marked_and_few() -> None:
    all_blocks = [s for page in _PAGES for s in snippets(page)]
    runnable = [s for s in all_blocks if s.runnable]
    assert all_blocks, "no python blocks found in the docs"
    # Most blocks must run; a fragment needs the marker, so an unmarked broken excerpt fails the test above.
    assert len(runnable) >= len(all_blocks) / 2, [f"{s.page}:{s.line}" for s in all_blocks if not s.runnable]


def test_quickstart_is_marked() -> None:
    code = marked(ROOT / "README.md", "snippet:quickstart")
    assert "configure_optimizers" in code
    assert "trainer.fit" in code
    assert os.path.exists(ROOT / "mkdocs.yml")
