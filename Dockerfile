# tlq worker and CLI image.
#
#   docker build -t tlq:cpu .                                      # CPU wheels of torch
#   docker build -t tlq:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#
# The CUDA wheels carry their own CUDA libraries; the host needs only the NVIDIA driver and the NVIDIA
# container toolkit. The image runs as a normal user (Celery warns when a worker runs as root).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/hf-cache \
    TLQ_HOME=/home/tlq/.tlq \
    TLQ_ARTIFACTS_DIR=/artifacts

RUN useradd --create-home --uid 1000 tlq \
    && mkdir -p /artifacts /hf-cache \
    && chown tlq:tlq /artifacts /hf-cache

WORKDIR /opt/tlq
COPY pyproject.toml README.md ./
COPY tlq ./tlq
RUN pip install --index-url "${TORCH_INDEX}" "torch>=2.10" torchvision \
    && pip install .

USER tlq
ENTRYPOINT ["tlq"]
CMD ["worker"]
