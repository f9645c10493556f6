"""Model cards record the code that registered them: the git commit and a dirty flag, or the package version."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess

import pytest

from tasks.registry import _CODE_ROOT, code_version, register_model
from tasks.store import Store
from tests.registry_fakes import stand_in_keras_file

PACKAGE = importlib.metadata.version("aml-smear")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(_CODE_ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def checkout():
    try:
        if _git("rev-parse", "--show-toplevel") != str(_CODE_ROOT):
            pytest.skip("the code does not run from its own git checkout here")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git checkout here")


def test_in_a_git_checkout_the_commit_and_dirty_flag(checkout):
    version = code_version()
    assert version["commit"] == _git("rev-parse", "HEAD")
    assert version["dirty"] is bool(_git("status", "--porcelain", "--untracked-files=no"))
    assert version["package"] == PACKAGE


def test_a_dirty_checkout_is_flagged(tmp_path):
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "module.py").write_text("x = 1\n")
    for args in (
        ["init", "-q"],
        ["add", "module.py"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one"],
    ):
        subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)
    clean = code_version(root)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (root / "untracked.txt").write_text("not code")
    assert code_version(root)["dirty"] is False  # untracked files do not count
    (root / "module.py").write_text("x = 2\n")
    assert code_version(root) == {"package": PACKAGE, "commit": clean["commit"], "dirty": True}


def test_without_git_the_package_version_and_no_dirty_flag(tmp_path, monkeypatch):
    assert code_version(tmp_path) == {
        "package": PACKAGE,
        "commit": None,
        "dirty": None,
    }  # not a checkout
    inner = tmp_path / "checkout" / "site-packages"
    inner.mkdir(parents=True)
    subprocess.run(["git", "-C", str(tmp_path / "checkout"), "init", "-q"], check=True)
    # Installed inside another repository: that repository's commit is not this code's.
    assert code_version(inner)["commit"] is None
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no git program at all
    assert code_version() == {"package": PACKAGE, "commit": None, "dirty": None}


def test_register_model_records_the_code_version(tmp_path):
    model_file = stand_in_keras_file(tmp_path / "model.keras")
    ref = register_model(
        str(model_file),
        {"config": {"model": {"image_size": 32}}, "code_version": "0.1.0"},
        Store(str(tmp_path / "store")),
    )
    card = json.loads((tmp_path / "store" / "models" / ref.version / "model_card.json").read_text())
    assert card["code_version"] == code_version()


def test_an_image_style_install_records_the_commit_it_was_built_from(tmp_path):
    """The worker images copy no .git: the build records the commit (a build argument) in the package."""
    import os
    import re
    import shlex
    import shutil
    import sys

    from tests.deployments.test_infra import _instructions

    commit = (
        _git("rev-parse", "HEAD")
        if (_CODE_ROOT / ".git").exists()
        else "0123456789abcdef" * 2 + "01234567"
    )
    source, site = tmp_path / "opt" / "aml-smear", tmp_path / "site"
    source.mkdir(parents=True)
    env = {**os.environ, "AML_SMEAR_COMMIT": commit, "PYTHONPATH": ""}
    for instruction, arguments in _instructions(_CODE_ROOT / "infra" / "cpu.Dockerfile"):
        if instruction == "COPY":
            *paths, _target = shlex.split(arguments)
            for path in paths:
                copy = shutil.copytree if (_CODE_ROOT / path).is_dir() else shutil.copy
                copy(_CODE_ROOT / path, source / path)
        elif instruction == "RUN" and "pip install" in arguments:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--no-deps",
                    "--no-build-isolation",
                    "--target",
                    str(site),
                    ".",
                ],
                cwd=source,
                env=env,
                check=True,
                capture_output=True,
            )
        elif instruction == "RUN" and "useradd" not in arguments:
            subprocess.run(
                ["sh", "-c", arguments.replace("python ", f"{sys.executable} ")],
                cwd=source,
                env=env,
                check=True,
                capture_output=True,
            )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import json; from tasks.registry import code_version; print(json.dumps(code_version()))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
        env={**env, "PYTHONPATH": str(site)},
    )
    recorded = json.loads(run.stdout)
    assert recorded["commit"] == re.sub(r"-dirty$", "", commit) and recorded["dirty"] is False, (
        recorded
    )


def test_a_build_without_a_commit_fails_and_a_dirty_one_says_so(tmp_path):
    from tasks.build_info import read_build_commit, write_build_commit

    with pytest.raises(ValueError, match="--build-arg AML_SMEAR_COMMIT"):
        write_build_commit("", tmp_path / "build_commit.txt")
    assert read_build_commit(tmp_path / "build_commit.txt") is None
    write_build_commit("a" * 40 + "-dirty", tmp_path / "build_commit.txt")
    assert read_build_commit(tmp_path / "build_commit.txt") == ("a" * 40, True)
