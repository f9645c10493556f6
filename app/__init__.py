"""The application layer: the ``aml-smear`` command line (:mod:`app.cli`), serving the deployments
(:mod:`app.serve`) and the local Prefect stack (:mod:`app.local_stack`). It sits above ``flows/``
and beside ``deployments/``, whose declaration (``prefect.yaml``) it reads; nothing below imports it."""
