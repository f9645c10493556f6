"""Which inference precision a worker scores in: ``precision="auto"`` and its accuracy guard.

Reduced precision pays where the hardware computes it natively: bfloat16 on CPUs with AMX or
AVX-512 BF16 (oneDNN), float16 on GPUs. Elsewhere it is emulated and slower than float32. A model
may score in a reduced precision only if, on its own test cells, its probabilities there stayed
within :data:`aml_model.inference.REDUCED_PRECISION_MAX_ABS_DP` of float32: the figure is measured
at training (:func:`precision_agreement`) and recorded in the model card.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "AUTO",
    "BF16_CPU_FLAGS",
    "auto_precision",
    "cpu_flags",
    "precision_agreement",
    "resolve_precision",
]

AUTO = "auto"
#: /proc/cpuinfo flags of the CPUs on which oneDNN computes bfloat16 natively.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def auto_precision(flags: frozenset[str], gpu: bool) -> str:
    """The fastest precision of a worker: float16 on a GPU, bfloat16 on a CPU with AMX or
    AVX-512 BF16, float32 elsewhere."""
    if gpu:
        return "float16"
    return "bfloat16" if flags & BF16_CPU_FLAGS else "float32"


def resolve_precision(
    requested: str,
    agreement: Mapping[str, float] | None,
    flags: frozenset[str],
    gpu: bool,
    max_abs_dp: float,
) -> tuple[str, str]:
    """The precision a worker scores a model in, and why.

    Args:
        requested: "auto" or an explicit precision (returned as it is: the caller asked for it).
        agreement: the model card's largest |p_reduced - p_float32| on its test cells, by
            precision; None or a missing entry means unmeasured.
        flags, gpu: the worker's CPU flags and whether it has a GPU.
        max_abs_dp: the accuracy guard.

    Returns:
        (precision, reason).
    """
    if requested != AUTO:
        return requested, "requested"
    candidate = auto_precision(flags, gpu)
    if candidate == "float32":
        return candidate, "no native reduced precision on this worker"
    measured = (agreement or {}).get(candidate)
    if measured is None:
        return "float32", f"{candidate} agreement with float32 not recorded for this model"
    if measured > max_abs_dp:
        return (
            "float32",
            f"{candidate} differs from float32 by up to {measured:.3f} > {max_abs_dp:g} on the test cells",
        )
    return (
        candidate,
        f"{'GPU' if gpu else 'CPU with bf16'}; max |dp| {measured:.4f} on the test cells",
    )


def precision_agreement(
    model,
    cells: np.ndarray | Iterable[np.ndarray],
    precisions: tuple[str, ...] = ("bfloat16", "float16"),
    batch_size: int = 32,
) -> dict[str, float]:
    """Largest |p - p_float32| over ``cells`` of the model's inference form in each precision.

    Args:
        model: the paper model.
        cells: `(n, s, s, 3)` uint8 cells, or an iterable of such arrays (read one at a time, so
            that many cells need not be in memory at once).

    Returns:
        {precision: max abs probability difference}, NaN-free; empty for no cells.
    """
    from aml_model.inference import BatchScorer, inference_model

    batches = [cells] if isinstance(cells, np.ndarray) else cells
    scorers = {
        name: BatchScorer(inference_model(model, name), batch_size)
        for name in ("float32", *precisions)
    }
    largest: dict[str, float] = {}
    for batch in batches:
        if not len(batch):
            continue
        reference = scorers["float32"](batch)
        for precision in precisions:
            moved = float(np.max(np.abs(scorers[precision](batch) - reference)))
            largest[precision] = max(largest.get(precision, 0.0), moved)
    return largest
