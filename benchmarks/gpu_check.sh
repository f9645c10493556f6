#!/usr/bin/env bash
# GPU check, a few minutes: cells/s of the model alone and of score-smears end to end, fp32 and
# float16, on the machine's NVIDIA GPU(s), one Dask worker per GPU. Needs the project installed
# with the gpu extra (pip install -c constraints.txt -e '.[gpu,dev]') and the LMU cells.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PYTHON" -c "import tensorflow as tf; gpus = tf.config.list_physical_devices('GPU'); print('TensorFlow sees', gpus); assert gpus, 'no GPU visible to TensorFlow'"
# Few training epochs: the model only has to exist; its training time is not what is measured here.
export AML_SMEAR_BENCH_RETRAIN_EPOCHS=${AML_SMEAR_BENCH_RETRAIN_EPOCHS:-2}
export AML_SMEAR_BENCH_CELLS=${AML_SMEAR_BENCH_CELLS:-640}
export AML_SMEAR_BENCH_RESULTS=${AML_SMEAR_BENCH_RESULTS:-benchmarks/results/gpu.json}
"$PYTHON" -m benchmarks score
