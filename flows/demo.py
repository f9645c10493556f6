"""The demo flow: synthetic cohorts -> retrain-and-evaluate (small configuration) -> score-smears."""

from __future__ import annotations

import posixpath
from pathlib import Path

from prefect import flow, get_run_logger

from aml_model.config import SummaryConfig
from aml_model.synthetic import DEMO_COHORT, SyntheticPatient, write_synthetic_cohort
from flows.parameters import Positive, RetrainOptions, ScoreOptions
from flows.retrain import retrain_and_evaluate
from flows.runner import on_this_cluster
from flows.score import score_smears

__all__ = ["DEMO_IMAGE_SIZE", "demo_flow"]

DEMO_IMAGE_SIZE = 64
# A separate synthetic cohort to train on, so the scored demo patients are unseen cells.
TRAINING_COHORT = tuple(
    SyntheticPatient(f"SYN-TRAIN-{i:02d}", "aml" if i % 2 else "healthy", 0.5) for i in range(4)
)


@flow(name="demo", validate_parameters=True)
def demo_flow(
    store: str, epochs: Positive = 15, cells_per_patient: Positive = SummaryConfig.min_cells
) -> dict:
    """Draw the synthetic cohorts, train a demo champion, and score the demo patients.

    The demo patients are scored with score-smears' default settings, so that the same cohort
    through the CLI or a deployment gets the same calls; each patient holds the fewest cells the
    default call needs. The parameters are checked before anything is written (:mod:`flows.parameters`).

    Returns:
        score-smears' result plus the store, the demo data folder, the model folder and the call
        settings it scored with.
    """
    logger = get_run_logger()
    data = write_synthetic_cohort(Path(store) / "demo-data", DEMO_COHORT, cells_per_patient, seed=0)
    training = write_synthetic_cohort(
        Path(store) / "demo-training-data", TRAINING_COHORT, 60, seed=1
    )
    logger.info("synthetic demo cohort in %s, training cohort in %s", data, training)
    # The paper's procedure at a small input size, with an untrained backbone: nothing to download.
    # Both subflows run their tasks on this flow's cluster (``demo --workers N`` sizes it).
    model = on_this_cluster(retrain_and_evaluate)(
        sources=[str(training)],
        store=store,
        options=RetrainOptions(
            epochs=epochs,
            patience=3,
            backbone_weights="none",
            image_size=DEMO_IMAGE_SIZE,
            augment_views=1,
        ),
    )
    options = ScoreOptions()
    result = on_this_cluster(score_smears)(source=str(data), store=store, options=options)
    return {
        **result,
        "store": store,
        "data": str(data),
        "model_dir": posixpath.dirname(model["model"]),
        "model_metrics": model["metrics"],
        "call_settings": options.model_dump(
            include={"threshold", "blast_cutoff", "min_cells", "max_quarantined_share"}
        ),
    }
