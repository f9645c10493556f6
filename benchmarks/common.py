"""Shared helpers: the real data, cohorts drawn from it, the machine, and the result file."""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LMU_CELLS = Path(
    os.environ.get("AML_SMEAR_LMU_CELLS", PROJECT_ROOT.parent / "shared" / "data" / "lmu-cells")
)
# The smoke test points this elsewhere so that it never overwrites a real result.
RESULTS = Path(
    os.environ.get(
        "AML_SMEAR_BENCH_RESULTS", PROJECT_ROOT / "benchmarks" / "results" / "latest.json"
    )
)


def require_lmu_cells() -> Path:
    if not (LMU_CELLS / "labels.csv").is_file():
        raise SystemExit(f"real cell data not found at {LMU_CELLS} (set AML_SMEAR_LMU_CELLS)")
    return LMU_CELLS


def lmu_rows(lmu: Path) -> tuple[list[dict], list[dict]]:
    """The labelled LMU cells as (blast rows, normal rows), each in file order."""
    with open(lmu / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r for r in rows if r["label"] == "blast"], [r for r in rows if r["label"] == "normal"]


def sample_cohort(
    lmu: Path, root: Path, n_cells: int, offset: int = 0, patients: int = 4
) -> list[tuple[Path, str]]:
    """Copy n_cells real cells, half blasts, into patient folders under ``root``.

    ``offset`` skips that many cells of each class, so two cohorts with offsets apart share no
    cell. Cells are dealt to patients in turn. Writes ``root/labels.csv``; returns (path, label).
    """
    blasts, normals = lmu_rows(lmu)
    picked = (
        blasts[offset : offset + n_cells // 2] + normals[offset : offset + n_cells - n_cells // 2]
    )
    if len(picked) < n_cells:
        message = f"only {len(picked)} LMU cells after offset {offset}, {n_cells} asked for"
        raise SystemExit(message)
    cells = []
    for number, row in enumerate(picked):
        patient = root / f"P{number % patients}"
        patient.mkdir(parents=True, exist_ok=True)
        target = patient / Path(row["file"]).name
        shutil.copyfile(lmu / row["file"], target)
        cells.append((target, row["label"]))
    (root / "labels.csv").write_text(
        "image,label\n"
        + "".join(f"{path.relative_to(root).as_posix()},{label}\n" for path, label in cells)
    )
    return cells


def machine() -> dict:
    """What the numbers were measured on: CPU model, cores, the vector extensions that matter, TF."""
    flags, model = set(), platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    import tensorflow as tf

    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "vector_extensions": [f for f in wanted if f in flags],
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
    }


def record(results: dict) -> dict:
    """Merge ``results`` into benchmarks/results/latest.json with a description of the machine."""
    current = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    current.update(results)
    current["machine"] = machine()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(current, indent=2, sort_keys=True))
    return current


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}", flush=True)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}", flush=True)


def current_rss_mib() -> float:
    """This process's resident memory now, MiB (``VmRSS``)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def peak_rss_mib(pid: int | None = None) -> float:
    """The peak resident set of one process (``VmHWM``, Linux), MiB; this process by default.

    Not ``ru_maxrss``: a process started by fork and exec keeps its parent's ``ru_maxrss``
    high-water mark, so every worker and subprocess a benchmark starts would report at least the
    benchmark's own peak. ``VmHWM`` belongs to the process's own memory map, which exec replaces,
    and :func:`reset_peak_rss` starts it again.
    """
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return float("nan")


def reset_peak_rss() -> None:
    """Start this process's ``VmHWM`` again from its current RSS (``/proc/self/clear_refs``, 5), so
    that :func:`peak_rss_mib` measures what comes after, not what the process did before."""
    Path("/proc/self/clear_refs").write_text("5")


def run_processes(client) -> dict:
    """The processes a score-smears run uses, by name, as ``psutil.Process``: this one (the flow,
    and the scheduler of a LocalCluster started here), each worker of ``client``'s cluster, and
    the Prefect API server that this process started (a uvicorn child), where there is one: a
    server elsewhere (``PREFECT_API_URL`` set outside) is not counted."""
    import psutil

    processes = {"flow (and scheduler)": psutil.Process()}
    processes |= {
        f"worker {address}": psutil.Process(pid) for address, pid in client.run(os.getpid).items()
    }
    workers = {p.pid for p in processes.values()}
    processes |= {
        f"Prefect API server (pid {child.pid})": child
        for child in psutil.Process().children(recursive=True)
        if child.pid not in workers and "uvicorn" in " ".join(child.cmdline())
    }
    return processes


def cpu_seconds(processes: dict) -> dict[str, float]:
    """User and system CPU seconds each of ``processes`` (:func:`run_processes`) has used so far."""
    return {name: sum(process.cpu_times()[:2]) for name, process in processes.items()}


def run_fresh(module: str, args: list[str], marker: str) -> dict:
    """Run ``python -m module *args`` in a fresh process and return the JSON after ``marker`` on
    its last such line: a measurement whose every peak belongs to that process alone."""
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"{module} {' '.join(args)} failed:\n{completed.stderr[-3000:]}")
    line = next(line for line in completed.stdout.splitlines()[::-1] if line.startswith(marker))
    return json.loads(line[len(marker) :])
