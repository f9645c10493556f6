"""The ML library of aml-smear: Hassan et al.'s ResNet50 AML blast classifier, Prefect-free.

Modules: ``config`` (typed defaults), ``preprocess`` (decode cells), ``augment``,
``architecture`` (``build_model``), ``weights``, ``data`` (tf.data), ``train``, ``predict``,
``evaluate`` (metrics), ``figures`` (PNG figures), ``split``, ``io`` (.keras files),
``synthetic`` (demo cells), ``errors``. Import the submodules you need: TensorFlow loads
only with the modules that use it.
"""

__all__ = [
    "architecture", "augment", "config", "data", "errors", "evaluate", "figures", "io",
    "predict", "preprocess", "split", "synthetic", "train", "weights",
]
