"""The paper's full configuration on real LMU cells, kept within CI time by the feature cache."""

import json
import shutil

import pytest

from flows.retrain import retrain_and_evaluate
from tests.corpus import lmu_rows


@pytest.mark.slow
def test_full_configuration_on_real_cells(lmu_cells, tmp_path, task_runner):
    # 50 cells of each class in the LMU class layout: the full configuration's cost is per cell,
    # and what is tested is that it trains, registers and evaluates, not its accuracy.
    source = tmp_path / "lmu-subset"
    for cls in ("MYO", "NGS"):
        (source / cls).mkdir(parents=True)
        for row in [r for r in lmu_rows(lmu_cells) if r["file"].startswith(f"{cls}/")][:50]:
            shutil.copyfile(lmu_cells / row["file"], source / row["file"])
    # 224x224 input, frozen ResNet50 with the weights available offline ("none"), the paper's
    # head, Adam 1e-4, early stopping; one cached view per cell.
    result = retrain_and_evaluate.with_options(task_runner=task_runner)(
        sources=[str(source)], store=str(tmp_path / "store"), backbone_weights="none", augment_views=0,
        epochs=50, patience=5)
    card = json.loads((tmp_path / "store" / "models" / result["version"] / "model_card.json").read_text())
    assert card["config"]["model"]["image_size"] == 224 and card["config"]["model"]["head_units"] == 128
    assert card["split"]["by"] == "cell" and card["split"]["sizes"] == {"train": 80, "val": 10, "test": 10}
    assert result["embedded"] == 90  # train + validation cells, one view each
    assert result["promoted"]
    auc = result["metrics"]["roc_auc"]
    print(f"full configuration, untrained backbone, LMU subset test ROC AUC {auc:.3f}")
    # An untrained backbone is not the paper's ImageNet one, and the head may not learn from it.
    assert 0.0 <= auc <= 1.0
    assert card["metrics"]["n"] == 10 and card["metrics"]["tp"] + card["metrics"]["fn"] == 5
