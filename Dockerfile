# The portal's image, built OFFLINE from the delivery archive.
#
# Build context: the unpacked archive root (wheelhouse/, model/, config/, ...);
# docker-compose.yml builds it (`docker-compose build`). Only wheelhouse/ is
# copied in: the model and config/ are mounted read-only at run time, the keys
# are compose secrets. pip never reaches an index (--no-index, PIP_NO_INDEX) and
# installs exactly wheelhouse/requirements.txt, every wheel checked against its
# pinned hash (as scripts/install.sh does).
#
# Nothing is fetched from the network: the base image must already be on the
# host (on a connected machine: docker pull python:3.11-slim-bookworm &&
# docker save ... ; here: docker load). There is deliberately no `# syntax=`
# line, which would make BuildKit fetch a frontend image.
#
# GPU: the CUDA build of torch (a wheelhouse made with the CUDA switch of
# `make delivery`) brings the CUDA libraries as wheels; the NVIDIA container
# toolkit on the host provides the driver. The default CPU wheelhouse serves
# docker-compose.cpu.yml.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY wheelhouse/ /wheelhouse/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheelhouse --only-binary :all: \
      --require-hashes -r /wheelhouse/requirements.txt \
 && /opt/venv/bin/pip check

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_INDEX=1 \
    DJANGO_SETTINGS_MODULE=portal.settings \
    PORTAL_DOTENV= \
    PORTAL_BIND=0.0.0.0:8000 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN groupadd --system --gid 10001 portal \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin portal
COPY --from=build /opt/venv /opt/venv
# The root filesystem is read-only at run time (compose read_only), so every
# folder the settings create at import (var/ and var/static beside the
# installed packages) is made here, with the static files collected into it;
# the data and audit-mirror folders are volume mount points owned by the
# portal user (a new named volume takes that ownership).
RUN set -eu; \
    site="$(python -c 'import pathlib, portal; print(pathlib.Path(portal.__file__).resolve().parent.parent)')"; \
    test -f "$site/portal/gunicorn.conf.py"; \
    mkdir -p /app/model /app/config "$site/var/static" /var/lib/sealed-search /var/log/sealed-search/audit; \
    ln -s "$site/portal/gunicorn.conf.py" /app/gunicorn.conf.py; \
    PORTAL_MODE=development django-admin collectstatic --noinput -v 0; \
    chown 10001:10001 /var/lib/sealed-search /var/log/sealed-search/audit; \
    chmod 0700 /var/lib/sealed-search /var/log/sealed-search/audit
USER 10001:10001
WORKDIR /app
EXPOSE 8000
CMD ["gunicorn", "-c", "/app/gunicorn.conf.py", "portal.wsgi"]
