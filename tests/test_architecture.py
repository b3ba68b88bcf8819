"""The import direction (pyproject.toml, [tool.importlinter]) is checked by `make lint`: an
import the wrong way fails the build, naming the contract it breaks."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGES = ("config", "backoffice", "workers", "payment", "shop", "infra", "alipay_sandbox")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _copy_of_the_sources(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", tree / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return tree


@pytest.mark.slow
def test_the_sources_keep_every_import_contract() -> None:
    result = _lint_imports(ROOT)

    assert result.returncode == 0, result.stdout + result.stderr
    assert " broken" in result.stdout and "0 broken" in result.stdout


@pytest.mark.slow
def test_infrastructure_importing_the_payment_domain_fails_the_lint(tmp_path: Path) -> None:
    tree = _copy_of_the_sources(tmp_path)
    with (tree / "infra" / "__init__.py").open("a") as init:
        init.write("\nimport payment  # noqa: F401\n")

    result = _lint_imports(tree)

    assert result.returncode != 0, result.stdout
    output = " ".join(result.stdout.split())  # contract names are wrapped at the width
    assert "Infrastructure imports no domain package BROKEN" in output
    assert "Top-level packages import downwards only BROKEN" in output
    assert "infra is not allowed to import payment" in output
    assert "infra -> payment" in output
