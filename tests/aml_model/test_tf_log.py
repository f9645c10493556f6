import os
import subprocess
import sys
from pathlib import Path

from aml_model.tf_log import shown_lines

# What TensorFlow 2.21 writes while it loads, before it reads TF_CPP_MIN_LOG_LEVEL (shortened).
START_UP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796399608.006906    9989 port.cc:153] oneDNN custom operations are on. You may see ...\n",
    "I0000 00:00:1796399608.007279    9989 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n",
    "W0000 00:00:1796399608.049391    9989 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n",
    "To enable the following instructions: AVX2 AVX512F, rebuild TensorFlow.\n",
    "E0000 00:00:1796399615.611170    9995 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n",
]


def test_the_level_hides_the_start_up_lines_below_it_and_nothing_else():
    other = "/usr/lib/python3/foo.py:1: DeprecationWarning: something\n"
    assert shown_lines([*START_UP, other], 0) == [*START_UP, other]
    # A line that continues a hidden one (no prefix of its own) goes with it.
    assert shown_lines([*START_UP, other], 2) == [START_UP[5], other]
    assert shown_lines([other, *START_UP], 3) == [other]


def test_a_process_that_imports_the_library_first_imports_tensorflow_quietly():
    code = "import aml_model.train, tensorflow as tf; tf.constant(1) + 1; print('loaded')"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    quiet = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert quiet.returncode == 0 and quiet.stdout == "loaded\n", quiet.stderr
    assert "absl::InitializeLog" not in quiet.stderr and "oneDNN" not in quiet.stderr, quiet.stderr
    assert "cudart_stub" not in quiet.stderr, quiet.stderr
