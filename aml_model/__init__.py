"""The ML library of aml-smear: Hassan et al.'s ResNet50 AML blast classifier, Prefect-free.

Modules: ``config`` (typed defaults), ``preprocess`` (decode cells), ``augment``,
``architecture`` (``build_model``), ``weights``, ``data`` (tf.data), ``train``, ``predict``,
``inference`` (the folded, compiled scoring form), ``evaluate`` (metrics), ``figures`` (PNG
figures), ``explain`` (Grad-CAM), ``report`` (HTML reports), ``split``, ``io`` (.keras files),
``aggregate`` (per-patient calls), ``catalog``, ``layouts``, ``promotion``, ``experiment``,
``summary``, ``synthetic`` (demo cells), ``errors``, ``tf_log``. Import the submodules you need:
TensorFlow loads only with the modules that use it.
"""

from aml_model import tf_log

# Every process that runs the model imports this package before TensorFlow (the CLI, Dask workers
# unpickling a task, a deployment's flow-run process): TF_CPP_MIN_LOG_LEVEL then hides TensorFlow's
# start-up lines too.
tf_log.install()

__all__ = [
    "aggregate",
    "architecture",
    "augment",
    "catalog",
    "config",
    "data",
    "errors",
    "evaluate",
    "experiment",
    "explain",
    "figures",
    "inference",
    "io",
    "layouts",
    "predict",
    "preprocess",
    "promotion",
    "report",
    "split",
    "summary",
    "synthetic",
    "tf_log",
    "train",
    "weights",
]
