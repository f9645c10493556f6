"""The deployments of aml-smear: their one declaration (prefect.yaml), entrypoints, the local stack and automations."""
