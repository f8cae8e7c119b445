"""The wheel and sdist: built from the repository, installed in a fresh venv with the runtime dependencies only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import tomllib

import lit_optim
from tests.docs_snippets import ROOT, marked

pytestmark = pytest.mark.packaging


def _torch_pin() -> str:
    """The torch requirement of requirements-dev.txt (the CPU wheel these machines ship)."""
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        if re.match(r"^torch\s*==", line.strip()):
            return line.strip()
    raise AssertionError("requirements-dev.txt pins no torch version")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


def test_wheel_holds_every_subpackage_license_and_py_typed(dist: Path) -> None:
    (wheel,) = dist.glob("lit_optim-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "lit_optim").rglob("__init__.py"))
    assert packages, "no packages found"
    for package in packages:
        assert f"{package}/__init__.py" in names, package
    assert "lit_optim/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    (sdist,) = dist.glob("lit_optim-*.tar.gz")
    assert sdist.name == f"lit_optim-{lit_optim.__version__}.tar.gz"


def test_one_version_and_a_license_matching_pyproject(dist: Path) -> None:
    (wheel,) = dist.glob("lit_optim-*.whl")
    assert wheel.name.startswith(f"lit_optim-{lit_optim.__version__}-")
    metadata = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert f"\nVersion: {lit_optim.__version__}\n" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert f"\nLicense-Expression: {project['license']}\n" in text
    assert "Apache License" in (ROOT / "LICENSE").read_text().split("\n", 3)[1]


def test_wheel_installs_in_a_fresh_venv_and_runs_the_quick_start(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("lit_optim-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    # Nothing of this checkout may leak in (a PYTHONPATH would make pip see lit_optim as installed).
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel), _torch_pin()],
        check=True,
        capture_output=True,
        env=clean_env,
        timeout=900,
    )
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True, text=True, env=clean_env
    ).stdout
    for dev_only in ("pytest", "mypy", "ruff", "mkdocs", "matplotlib", "jsonargparse"):
        assert f"\n{dev_only}==" not in "\n" + installed.lower(), f"{dev_only} came with the runtime install"
    script = tmp_path / "quickstart.py"
    script.write_text(
        "import lit_optim\n"
        "assert '/site-packages/' in lit_optim.__file__, lit_optim.__file__\n"
        + marked(ROOT / "README.md", "snippet:quickstart")
    )
    done = subprocess.run(
        [str(python), str(script)], cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
