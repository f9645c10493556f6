"""Model files that name code outside Keras are refused, not executed (Lambda: tests/aml_model/test_io.py)."""

from __future__ import annotations

import json
import zipfile

import pytest

from aml_model.errors import UnsafeModelError
from aml_model.io import load_model

pytestmark = pytest.mark.reliability


def tampered_model(tmp_path, name: str, edit) -> str:
    """A valid .keras file whose config.json ``edit`` rewrites, as an attacker would."""
    import keras

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(1, activation="relu", name="d")(inputs)).save(
        tmp_path / "ok.keras"
    )
    target = tmp_path / name
    with zipfile.ZipFile(tmp_path / "ok.keras") as source, zipfile.ZipFile(target, "w") as out:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                (dense,) = [
                    layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense"
                ]
                edit(dense)
                data = json.dumps(config).encode()
            out.writestr(item, data)
    return str(target)


def _os_system_activation(layer):
    layer["config"]["activation"] = {
        "module": "os",
        "class_name": "function",
        "config": "system",
        "registered_name": "system",
    }


def _popen_layer(layer):
    layer.update(module="subprocess", class_name="Popen", registered_name="Popen")


@pytest.mark.parametrize(
    ("name", "edit", "named"),
    [
        ("os-system.keras", _os_system_activation, "'os'"),
        ("popen.keras", _popen_layer, "'subprocess'"),
    ],
)
def test_a_model_naming_code_outside_keras_is_refused_clearly(tmp_path, name, edit, named):
    path = tampered_model(tmp_path, name, edit)
    with pytest.raises(
        UnsafeModelError, match=f"{name} names a class or function that is not a Keras object"
    ) as caught:
        load_model(path, compile=False)
    assert named in str(caught.value) and len(str(caught.value)) < 600
