import pytest

from tasks.devices import cluster_has_gpus, visible_gpus


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0,1", ["0", "1"]), ("2", ["2"]), ("", []), ("-1", []), (" 3 , ", ["3"])],
)
def test_cuda_visible_devices_decides_the_gpus(monkeypatch, value, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_gpus() == expected


def test_without_a_driver_there_are_no_gpus(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert visible_gpus() == []


def test_nvidia_smi_lists_the_gpus(monkeypatch, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    fake.chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert visible_gpus() == ["0", "1"]


def test_outside_a_flow_no_cluster_has_gpus():
    assert cluster_has_gpus() is False
