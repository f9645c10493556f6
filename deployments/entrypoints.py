"""Flows as deployed: the entrypoints of ``deployments/prefect.yaml``, one per deployment it declares.

A process worker loads this file in each flow-run process, so the Dask cluster comes from that
process's environment (``AML_SMEAR_DASK_SCHEDULER`` or ``AML_SMEAR_DASK_WORKERS``, set on the
worker or as the ``env`` job variable), read when the run starts. Each attribute is named by its
deployment's ``entrypoint`` (``score_smears``, ``score_new_arrivals``, ``retrain_and_evaluate``).
"""

from flows.serve import DEPLOYMENTS, dask_runner_from_environment, deployed_flow

__all__ = [spec.entrypoint for spec in DEPLOYMENTS]

globals().update({spec.entrypoint: deployed_flow(spec, dask_runner_from_environment()) for spec in DEPLOYMENTS})
