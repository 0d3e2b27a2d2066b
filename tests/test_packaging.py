"""Packaging: every package directory is listed, cli/ installs only as maild.cli, and a wheel is complete."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from conftest import MAILD, REPO


def _declared() -> tuple[set[str], dict[str, str]]:
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(tool["packages"]), tool["package-dir"]


def test_every_package_directory_is_listed_in_pyproject() -> None:
    packages, dirs = _declared()
    found = set()
    for name, folder in dirs.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    # A sub-package missing from the list imports fine in an editable install and is
    # missing from `pip install .`; this is the check that catches it.
    assert found == packages


def test_wheel_contains_cli_as_maild_cli_and_no_top_level_cli(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("maild-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "maild/cli/main.py" in names
    assert "maild/migrations/script.py.mako" in names
    assert any(n.startswith("maild/migrations/versions/0001") for n in names)
    assert "maild/py.typed" in names
    assert not [n for n in names if n.startswith("cli/")]
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "maild = maild.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_installed_command_runs_from_anywhere_and_cli_is_not_top_level() -> None:
    result = subprocess.run([MAILD, "--version"], capture_output=True, text=True, cwd="/", timeout=60)
    assert result.returncode == 0 and "maild, version" in result.stdout
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('cli'))"],
                           capture_output=True, text=True, cwd="/", timeout=60)
    assert probe.stdout.strip() == "None"


def test_stray_import_of_cli_from_the_checkout_is_refused() -> None:
    probe = subprocess.run([sys.executable, "-c", "import cli"], capture_output=True, text=True, cwd=REPO,
                           timeout=60)
    assert probe.returncode != 0 and "import maild.cli instead" in probe.stderr


def test_maild_package_is_typed_strictly() -> None:
    """Everything in maild/ is typed: mypy --strict (configured in pyproject) must pass."""
    result = subprocess.run([sys.executable, "-m", "mypy", "maild"], capture_output=True, text=True, cwd=REPO,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
