"""Every AML_SMEAR_* variable is parsed in tasks/settings.py, documented in one table, and refused by name when bad."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from tasks.settings import (
    PREFIX,
    SETTINGS,
    CacheSettings,
    DaskSettings,
    DebugSettings,
    LinkSettings,
    PrivacySettings,
    RegistrySettings,
    SettingError,
    table_rows,
    variable,
)

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_MODULE = ROOT / "tasks" / "settings.py"
# The packages' code (the CLI's too); tests and benchmarks read their own variables.
PACKAGES = ("aml_model", "tasks", "flows", "deployments", "app")
# Reads of a variable: mapping.get(KEY), os.getenv(KEY), environ[KEY], KEY in environ.
_READS = {"get", "getenv"}
# Written by the images' build (infra/*.Dockerfile), the Makefile, tests and benchmarks, and read there.
NOT_PARSED = {
    "AML_SMEAR_COMMIT",
    "AML_SMEAR_LOCAL",
    "AML_SMEAR_TEST_HOME",
    "AML_SMEAR_LMU_CELLS",
    "AML_SMEAR_PBC_CELLS",
}
NOT_PARSED_FAMILIES = ("AML_SMEAR_BENCH_",)


def _names_an_env_variable(node: ast.AST, constants: set[str]) -> bool:
    """``node`` is "AML_SMEAR_...", f"AML_SMEAR_...", or a name bound to one somewhere."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value.startswith(PREFIX)
    if isinstance(node, ast.JoinedStr) and node.values:
        return _names_an_env_variable(node.values[0], constants)
    if isinstance(node, ast.Name):
        return node.id in constants
    if isinstance(node, ast.Attribute):
        return node.attr in constants
    return False


def _env_constants(trees: dict[str, ast.Module]) -> set[str]:
    """Names assigned an AML_SMEAR_* variable's name: ``X = "AML_SMEAR_..."`` or ``X = variable(...)``."""
    names = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                value = node.value
                named = (
                    isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                    and value.value.startswith(PREFIX)
                ) or (
                    isinstance(value, ast.Call)
                    and getattr(value.func, "id", getattr(value.func, "attr", None)) == "variable"
                )
                if named:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    names |= {target.id for target in targets if isinstance(target, ast.Name)}
    return names


def environment_reads(trees: dict[str, ast.Module]) -> list[str]:
    """``path:line`` of each read of an AML_SMEAR_* variable in ``trees`` (writes are not reads)."""
    constants = _env_constants(trees)
    found = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            key = None
            if (
                isinstance(node, ast.Call)
                and node.args
                and (
                    getattr(node.func, "attr", None) in _READS
                    or getattr(node.func, "id", None) == "getenv"
                )
            ):
                key = node.args[0]
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                key = node.slice
            elif isinstance(node, ast.Compare) and any(
                isinstance(op, ast.In | ast.NotIn) for op in node.ops
            ):
                key = node.left
            if key is not None and _names_an_env_variable(key, constants):
                found.append(f"{path}:{node.lineno}")
    return found


def _package_trees() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(ROOT)): ast.parse(path.read_text(), str(path))
        for package in PACKAGES
        if (ROOT / package).is_dir()
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != SETTINGS_MODULE
    }


def test_only_the_settings_module_reads_aml_smear_variables():
    trees = _package_trees()
    assert "tasks/privacy.py" in trees and "app/serve.py" in trees
    assert environment_reads(trees) == [], "parse AML_SMEAR_* variables in tasks/settings.py"
    # And the plain text: no line outside tasks/settings.py names os.environ/getenv and an AML_SMEAR_ variable.
    lines = [
        f"{path}:{number}"
        for path in trees
        for number, line in enumerate((ROOT / path).read_text().splitlines(), 1)
        if re.search(r"\b(environ|getenv)\b", line) and PREFIX in line
    ]
    assert lines == []


def test_the_scan_finds_reads_and_lets_writes_pass():
    code = """
import os
KEY_ENV = "AML_SMEAR_KEY"
OTHER = variable("other")
a = os.environ.get("AML_SMEAR_DEBUG", "")
b = environ.get(KEY_ENV)
c = os.environ[OTHER]
d = os.getenv(f"AML_SMEAR_{name}")
e = "AML_SMEAR_X" in os.environ
os.environ[KEY_ENV] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
f = os.environ.get("HOME")
"""
    assert environment_reads({"m.py": ast.parse(code)}) == [
        "m.py:5",
        "m.py:6",
        "m.py:7",
        "m.py:8",
        "m.py:9",
    ]


def test_defaults_when_unset_or_empty():
    for environ in ({}, {variable(name): "" for cls in SETTINGS for name in cls.model_fields}):
        assert DebugSettings.read(environ).debug is False
        assert (
            CacheSettings.read(environ).cache_dir is None
            and CacheSettings.read(environ).cache_max_mb == 2048
        )
        assert LinkSettings.read(environ).link_expiry_seconds is None
        assert RegistrySettings.read(environ).model_prefixes == ()
        assert (
            DaskSettings.read(environ).dask_workers is None
            and DaskSettings.read(environ).dask_scheduler is None
        )
        assert PrivacySettings.read(environ).key is None


def test_values_are_parsed():
    assert (
        DebugSettings.read({"AML_SMEAR_DEBUG": "1"}).debug
        and DebugSettings.read({"AML_SMEAR_DEBUG": "yes"}).debug
    )
    assert not DebugSettings.read({"AML_SMEAR_DEBUG": "0"}).debug
    cache = CacheSettings.read({"AML_SMEAR_CACHE_DIR": "/tmp/c", "AML_SMEAR_CACHE_MAX_MB": "0.5"})
    assert (cache.cache_dir, cache.cache_max_mb) == ("/tmp/c", 0.5)
    assert (
        LinkSettings.read({"AML_SMEAR_LINK_EXPIRY_SECONDS": " 3600 "}).link_expiry_seconds == 3600
    )
    assert LinkSettings.read({"AML_SMEAR_LINK_EXPIRY_SECONDS": "0"}).link_expiry_seconds == 0
    assert RegistrySettings.read(
        {"AML_SMEAR_MODEL_PREFIXES": " /a/models, ,s3://b/m/ "}
    ).model_prefixes == ("/a/models", "s3://b/m/")
    assert DaskSettings.read({"AML_SMEAR_DASK_WORKERS": "3"}).dask_workers == 3
    privacy = PrivacySettings.read(
        {"AML_SMEAR_PATIENT_ID_KEY": " k ", "AML_SMEAR_PSEUDONYMISE": "true"}
    )
    assert privacy.key == b" k ", "the key is used as given"
    assert "k " not in repr(privacy), "the key stays out of reprs and logs"


@pytest.mark.parametrize(
    ("cls", "name", "value", "expected"),
    [
        (CacheSettings, "AML_SMEAR_CACHE_MAX_MB", "lots", "a number >= 0"),
        (CacheSettings, "AML_SMEAR_CACHE_MAX_MB", "-1", "a number >= 0"),
        (LinkSettings, "AML_SMEAR_LINK_EXPIRY_SECONDS", "604801", "an integer in [0, 604800]"),
        (LinkSettings, "AML_SMEAR_LINK_EXPIRY_SECONDS", "1 week", "an integer in [0, 604800]"),
        (DaskSettings, "AML_SMEAR_DASK_WORKERS", "0", "an integer >= 1"),
        (DaskSettings, "AML_SMEAR_DASK_WORKERS", "two", "an integer >= 1"),
        (DebugSettings, "AML_SMEAR_DEBUG", "loud", "a boolean"),
        (PrivacySettings, "AML_SMEAR_PSEUDONYMISE", "please", "a boolean"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(cls, name, value, expected):
    with pytest.raises(
        SettingError, match=re.escape(f"{name}={value!r} is invalid: expected {expected}")
    ):
        cls.read({name: value})


def test_pseudonymising_without_a_key_is_refused():
    with pytest.raises(
        ValueError, match="AML_SMEAR_PSEUDONYMISE is set but AML_SMEAR_PATIENT_ID_KEY is not"
    ):
        PrivacySettings.read({"AML_SMEAR_PSEUDONYMISE": "1"})


def test_each_read_sees_the_environment_as_it_is_then(monkeypatch):
    monkeypatch.delenv("AML_SMEAR_DASK_WORKERS", raising=False)
    assert DaskSettings.read().dask_workers is None
    monkeypatch.setenv("AML_SMEAR_DASK_WORKERS", "5")
    assert DaskSettings.read().dask_workers == 5
    monkeypatch.setenv("AML_SMEAR_CACHE_MAX_MB", "lots")
    assert DaskSettings.read().dask_workers == 5, "a bad variable fails only what reads it"


def test_no_dotenv_file_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AML_SMEAR_DASK_WORKERS", raising=False)
    (tmp_path / ".env").write_text("AML_SMEAR_DASK_WORKERS=7\n")
    assert DaskSettings.read().dask_workers is None


def _environment_table() -> str:
    text = (ROOT / "docs" / "reference.md").read_text()
    section = text.split("## Environment variables", 1)[1]
    return section.split("\n## ", 1)[0]


def test_the_docs_table_has_every_parsed_variable_as_the_settings_say():
    table = _environment_table()
    missing = [row for row in table_rows() if row not in table]
    assert not missing, (
        "docs/reference.md is out of date: paste `python -m tasks.settings` into its table"
    )


def test_the_docs_table_lists_every_aml_smear_variable_the_repository_names():
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    named = set()
    for name in files:
        path = ROOT / name
        if path.resolve() == Path(__file__).resolve():
            continue  # this file's made-up names ("AML_SMEAR_X") are test data, not variables
        if path.is_file() and path.suffix not in {
            ".png",
            ".jpg",
            ".keras",
            ".h5",
            ".parquet",
            ".zarr",
        }:
            try:
                text = path.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            # Whole names only: "AML_SMEAR_DASK_*" and the prefix itself name no variable.
            named |= {
                found.rstrip("_")
                for found in re.findall(r"AML_SMEAR_[A-Z0-9_]+\*?", text)
                if not found.endswith("*")
            } - {PREFIX.rstrip("_")}
    table = _environment_table()
    family = {name for name in named if name.startswith(NOT_PARSED_FAMILIES)}
    undocumented = sorted(name for name in named - family if f"`{name}`" not in table)
    undocumented += [f"{prefix}*" for prefix in NOT_PARSED_FAMILIES if f"`{prefix}*`" not in table]
    assert undocumented == [], "add them to docs/reference.md's environment table"
    parsed = {variable(name) for cls in SETTINGS for name in cls.model_fields}
    assert named - parsed - NOT_PARSED - family == set(), (
        "a new variable: parse it in tasks/settings.py (or, read outside the packages, list it in NOT_PARSED)"
    )
