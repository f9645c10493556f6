# aml-smear worker image, GPU: as cpu.Dockerfile, on TensorFlow's CUDA image. Build from the
# repository root:
#
#   docker build -f infra/gpu.Dockerfile -t aml-smear:gpu .
#
# The base already holds tensorflow 2.21.0, which satisfies pyproject.toml and constraints.txt;
# the `gpu` extra (tensorflow[and-cuda]) adds the CUDA/cuDNN wheels TensorFlow 2.21 was built
# against, so a system cuDNN of another version in the base cannot be picked up by mistake.
# The host needs the NVIDIA driver and the NVIDIA container toolkit.
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=3 \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

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
RUN python3 -m tasks.build_info "$AML_SMEAR_COMMIT"
RUN python3 -m pip install -c constraints.txt '.[gpu]'

RUN useradd --create-home --uid 10001 aml
USER aml
# One Dask worker per GPU: the compose file and the Kubernetes guide give each container one GPU.
CMD ["dask", "worker", "tcp://dask-scheduler:8786", "--nworkers", "1", "--nthreads", "1"]
