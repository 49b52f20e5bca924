# The flow image of this project: what the prefect-aws ECS work pool runs a pipeline run
# in (prefect.yaml's production deployment runs the flow in /opt/prefect/project).
#
# The pipeline's Build stage (buildspecs/flow-image.yml; sagepipe's CloudFormation stack
# runs it after the tests) builds it from this repository minus
# deployments/flow-image/exclude, tags it with the content hash of exactly that context
# (an unchanged tree is never built twice) and starts the push's run in it, by digest. So
# a push runs the pushed training script: the step images are hashed from steps/ in here.
#
# Base: ECR Public's copy of Docker's official python:3.11-slim, pinned by digest (Docker
# Hub rate-limits CodeBuild's shared addresses). To move the pin: `docker buildx
# imagetools inspect public.ecr.aws/docker/library/python:3.11-slim`, copy its Digest.
ARG PYTHON_IMAGE=public.ecr.aws/docker/library/python:3.11-slim@sha256:e88e9763f943ec1834f992a4b51e0f24500486803e8bc534e5767af9ea65f6ce
FROM $${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# the flow runs as this user, never as root
RUN useradd --create-home --uid 10001 --user-group prefect

WORKDIR /opt/prefect/project

# sagepipe, at the version this project was made with, in a layer of its own: a push that
# changes only your code reuses it. Another source: --build-arg SAGEPIPE_REQUIREMENT=...
# (a wheel's URL, git+https://...), or edit it here.
ARG SAGEPIPE_REQUIREMENT="$requirement"
RUN pip install "$${SAGEPIPE_REQUIREMENT}"

COPY . .
# a project that is a Python package itself is installed too; .sagepipe is the settings'
# state_dir (your step code is bundled there): the flow's user may write it
RUN if [ -f pyproject.toml ] || [ -f setup.py ]; then pip install .; fi \
    && mkdir -p .sagepipe \
    && chown prefect:prefect .sagepipe

# What this image runs, for the flow's check of its commit and the run record: the commit
# it was built from and the content hash of its build context (its tag).
ARG SAGEPIPE_COMMIT=""
ARG SAGEPIPE_CODE_HASH=""
LABEL org.opencontainers.image.revision="$${SAGEPIPE_COMMIT}" \
      io.sagepipe.code-hash="$${SAGEPIPE_CODE_HASH}"
ENV SAGEPIPE_COMMIT="$${SAGEPIPE_COMMIT}" \
    SAGEPIPE_CODE_HASH="$${SAGEPIPE_CODE_HASH}"

USER prefect
CMD ["prefect", "version"]
