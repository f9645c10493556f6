"""Shared helpers: the real data, a result file, a Prefect API for Dask workers."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LMU_CELLS = Path(os.environ.get("AML_SMEAR_LMU_CELLS", PROJECT_ROOT.parent / "shared" / "data" / "lmu-cells"))
RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "latest.json"


def require_lmu_cells() -> Path:
    if not (LMU_CELLS / "labels.csv").is_file():
        raise SystemExit(f"real cell data not found at {LMU_CELLS} (set AML_SMEAR_LMU_CELLS)")
    return LMU_CELLS


def record(results: dict[str, float]) -> dict:
    """Merge ``results`` into benchmarks/results/latest.json with a note of the machine."""
    current = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    current.update(results)
    current["machine"] = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(current, indent=2, sort_keys=True))
    return current


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}")
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
