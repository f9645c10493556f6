# aml-smear worker image, CPU: the Prefect process worker, the flow runs it starts, and the Dask
# scheduler and workers all run this one image, so the Prefect, Dask and TensorFlow versions of
# every process match. Build from the repository root:
#
#   docker build -f infra/cpu.Dockerfile -t aml-smear:cpu .
#
# Dependencies come only from pyproject.toml, pinned by constraints.txt: there is no second list.
# No credentials are baked in: AWS_* and PREFECT_API_URL come from the runtime environment.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=3 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

# The flow runs' working directory: deployments/prefect.yaml's pull step changes to the directory
# named by the Prefect variable aml_smear_code_dir, which `local_stack.py deploy` run here sets to
# this one, so deployments/entrypoints.py is found.
WORKDIR /opt/aml-smear
COPY pyproject.toml constraints.txt README.md ./
COPY aml_model ./aml_model
COPY tasks ./tasks
COPY flows ./flows
COPY app ./app
COPY deployments ./deployments
# The commit this image is built from (no .git is copied): model cards record it, and the nightly
# skips training when nothing changed (tasks/build_info.py). The build fails without it.
ARG AML_SMEAR_COMMIT
RUN python -m tasks.build_info "$AML_SMEAR_COMMIT"
RUN pip install -c constraints.txt .

RUN useradd --create-home --uid 10001 aml
USER aml
CMD ["prefect", "worker", "start", "--pool", "aml-smear", "--type", "process"]
