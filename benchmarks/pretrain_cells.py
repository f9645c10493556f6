"""The shared cells a shipped backbone may pretrain on: both labs without the robustness benchmark's held-out cells.

The robustness benchmark judges a backbone on held-out cells of its split (``--split-seed``, 0 by
default). A backbone pretrained on those cells, even without their labels, would have seen the
test set; this writes the other cells (train and validation of that split) as two class-layout
folders, ``<dest>/lmu-cells`` and ``<dest>/pbc-cells``, for ``aml-smear pretrain-backbone``.
The shared data stays where it is (read-only); the copies go outside the project.

``python -m benchmarks.pretrain_cells DEST [--split-seed 0]``
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd


def benchmark_frame() -> pd.DataFrame:
    """source, cell_type and file of every shared cell, in the robustness benchmark's order."""
    import csv

    from aml_model.layouts import LMU_CLASSES
    from benchmarks.bench_robustness import LMU, PBC

    frames = []
    for root, source in ((LMU, "lmu"), (PBC, "pbc")):
        with open(root / "labels.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        frames.append(
            pd.DataFrame(
                {
                    "source": source,
                    "root": str(root),
                    "file": [r["file"] for r in rows],
                    "cell_type": [LMU_CLASSES[r["matek_class"]] for r in rows],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def held_out(frame: pd.DataFrame, split_seed: int) -> np.ndarray:
    """Positions of the benchmark's held-out (test) cells: its split, stratified by source and type."""
    from aml_model.split import split_indices

    strata = (frame["source"] + "/" + frame["cell_type"]).to_numpy()
    return split_indices(strata, None, (0.8, 0.1, 0.1), seed=split_seed)["test"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args(argv)
    frame = benchmark_frame()
    keep = np.setdiff1d(np.arange(len(frame)), held_out(frame, args.split_seed))
    for row in frame.iloc[keep].itertuples():
        target = args.dest / f"{row.source}-cells" / row.file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(row.root) / row.file, target)
    print(
        f"{len(keep)} of {len(frame)} cells (split {args.split_seed} without its held-out cells) -> "
        f"{args.dest}/lmu-cells, {args.dest}/pbc-cells"
    )


if __name__ == "__main__":
    main()
