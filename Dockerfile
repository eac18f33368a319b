# The image every manifest in infra/ runs: Ray head and workers (training, Serve), the
# RayJob that runs `dvc repro`, and the MLflow server. Built from the same requirements as
# `make setup`: the CPU build of torch first (requirements/torch-cpu.txt), then the project
# with its `cluster` extra (PostgreSQL driver for MLflow's backend store, boto3 for its S3
# artifacts, dvc-s3 for the DVC remote).
#
#   docker build -t ghcr.io/your-org/seqops:0.1.0 .
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#       -t ghcr.io/your-org/seqops:0.1.0-cuda .        # the gpu worker group's image
#
# Tag images by version (the manifests pin them); never deploy :latest.
FROM python:3.11.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# git: DVC reads the repository a RayJob clones; tini: signals reach Ray and MLflow.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git tini \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 seqops
WORKDIR /opt/seqops

COPY requirements/ requirements/
RUN pip install --extra-index-url "$TORCH_INDEX" -r requirements/torch-cpu.txt

COPY pyproject.toml README.md ./
COPY seqops/ seqops/
COPY pipelines/ pipelines/
COPY seqmodels/ seqmodels/
COPY data_checks/ data_checks/
COPY serving/ serving/
COPY seqcore/ seqcore/
RUN pip install ".[cluster]"

USER seqops
WORKDIR /home/seqops
ENTRYPOINT ["/usr/bin/tini", "--"]
