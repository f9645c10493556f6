"""Flows as deployed: the entrypoints of ``deployments/prefect.yaml``, one per deployment it declares.

A process worker loads this file in each flow-run process, so the Dask cluster comes from that
process's environment (``AML_SMEAR_DASK_SCHEDULER`` or ``AML_SMEAR_DASK_WORKERS``, set on the
worker or as the ``env`` job variable), read when the run starts. Each attribute is named by its
deployment's ``entrypoint`` (``score_smears``, ``score_new_arrivals``, ``retrain_and_evaluate``).
"""

import os

from aml_model.tf_log import QUIET_LEVEL
from flows.logs import debug_requested

# Before anything imports TensorFlow, and inherited by the run's Dask workers: the run's output
# (a worker's log) is as quiet as the CLI's, whatever environment the worker was started with.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if debug_requested() else QUIET_LEVEL)

from app.serve import DEPLOYMENTS, dask_runner_from_environment, deployed_flow
from flows.runner import quiet_dask_logs

quiet_dask_logs()

__all__ = [spec.entrypoint for spec in DEPLOYMENTS]

globals().update(
    {spec.entrypoint: deployed_flow(spec, dask_runner_from_environment()) for spec in DEPLOYMENTS}
)
