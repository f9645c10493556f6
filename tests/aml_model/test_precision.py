import numpy as np
import pytest

from aml_model.precision import auto_precision, cpu_flags, precision_agreement, resolve_precision

AMX = "fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile"
AVX512_BF16 = "fpu sse2 avx2 avx512f avx512_bf16"
AVX2 = "fpu sse2 avx2 fma"


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(
        f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    )
    return path


@pytest.mark.parametrize(
    ("flags", "expected"), [(AMX, "bfloat16"), (AVX512_BF16, "bfloat16"), (AVX2, "float32")]
)
def test_auto_picks_bfloat16_only_on_cpus_that_compute_it(tmp_path, flags, expected):
    assert auto_precision(cpu_flags(cpuinfo(tmp_path, flags)), gpu=False) == expected


def test_auto_picks_float16_on_a_gpu_and_reads_no_flags_without_cpuinfo(tmp_path):
    assert auto_precision(cpu_flags(cpuinfo(tmp_path, AVX2)), gpu=True) == "float16"
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_a_model_whose_reduced_scores_drift_is_scored_in_float32(tmp_path):
    flags = cpu_flags(cpuinfo(tmp_path, AMX))
    assert (
        resolve_precision("auto", {"bfloat16": 0.01, "float16": 0.2}, flags, False, 0.05)[0]
        == "bfloat16"
    )
    precision, reason = resolve_precision("auto", {"bfloat16": 0.08}, flags, False, 0.05)
    assert precision == "float32" and "0.080 > 0.05" in reason
    assert (
        resolve_precision("auto", {"bfloat16": 0.01, "float16": 0.2}, flags, True, 0.05)[0]
        == "float32"
    )
    assert resolve_precision("auto", None, flags, False, 0.05)[0] == "float32"
    assert (
        resolve_precision(
            "auto", {"bfloat16": 0.01}, cpu_flags(cpuinfo(tmp_path, AVX2)), False, 0.05
        )[0]
        == "float32"
    )
    # An explicit choice is the caller's, guard or not.
    assert (
        resolve_precision("bfloat16", {"bfloat16": 0.5}, frozenset(), False, 0.05)[0] == "bfloat16"
    )


def test_agreement_is_the_largest_difference_from_float32(tiny_model_file):
    from aml_model.inference import BatchScorer, inference_model
    from aml_model.io import load_model

    model = load_model(tiny_model_file, compile=False)
    cells = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    agreement = precision_agreement(model, cells)
    reference = BatchScorer(inference_model(model, "float32"))(cells)
    bf16 = BatchScorer(inference_model(model, "bfloat16"))(cells)
    assert set(agreement) == {"bfloat16", "float16"}
    assert agreement["bfloat16"] == pytest.approx(float(np.max(np.abs(bf16 - reference))), abs=1e-7)
    # bfloat16 keeps 8 bits of mantissa, float16 11: float16 is the closer of the two here.
    assert 0 < agreement["float16"] < agreement["bfloat16"] < 0.05
    assert precision_agreement(model, cells[:0]) == {}
