"""Flows as deployed: the entrypoints of ``deployments/prefect.yaml``.

A process worker loads this file in each flow-run process, so the Dask cluster comes from that
process's environment (``AML_SMEAR_DASK_SCHEDULER`` or ``AML_SMEAR_DASK_WORKERS``, set on the
worker or as the ``env`` job variable), read when the run starts.
"""

from flows.serve import (NIGHTLY_RETRAIN, SCORE_NEW_ARRIVALS, SCORE_ON_DEMAND, dask_runner_from_environment,
                         deployed_flow)

__all__ = ["retrain_and_evaluate", "score_new_arrivals", "score_smears"]

score_smears = deployed_flow(SCORE_ON_DEMAND, dask_runner_from_environment())
score_new_arrivals = deployed_flow(SCORE_NEW_ARRIVALS, dask_runner_from_environment())
retrain_and_evaluate = deployed_flow(NIGHTLY_RETRAIN, dask_runner_from_environment())
