"""``python -m benchmarks [NAME ...]``: run the named benchmarks (default: all) in one process.

Results merge into benchmarks/results/latest.json (a run of all of them starts it afresh). The
scoring benchmark uses the model the retraining benchmark trained on real cells (or trains one
itself when run alone).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

BENCHMARKS = ("retrain", "score", "memory", "ingest", "scale", "night", "pretrain")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    from benchmarks.common import RESULTS
    from flows.runner import quiet_dask_logs, shared_prefect_api

    if set(names) == set(BENCHMARKS):
        RESULTS.unlink(
            missing_ok=True
        )  # a full run starts a fresh file: no figure from an older run stays
    quiet_dask_logs()
    context = {"work": tempfile.mkdtemp(prefix="aml-smear-bench-")}
    try:
        with shared_prefect_api():
            for name in sorted(names, key=BENCHMARKS.index):
                importlib.import_module(f"benchmarks.bench_{name}").main(context)
    finally:
        shutil.rmtree(context["work"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
