# The reconciler as a container: `docker run --rm -v "$PWD:/workspace" IMAGE plan`.
# Built by .github/workflows/release.yml from the wheel in dist/ (`python -m build`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY dist/*.whl /tmp/dist/
RUN pip install /tmp/dist/*.whl && rm -rf /tmp/dist \
    && useradd --create-home --uid 10001 reconcile \
    && mkdir /workspace && chown reconcile /workspace

USER reconcile
WORKDIR /workspace
ENTRYPOINT ["reconcile"]
CMD ["--help"]
