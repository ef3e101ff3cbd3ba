# syntax=docker/dockerfile:1

# ---- builder: install opsbot and its dependencies into a self-contained venv ----
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Runtime dependencies first, read straight from pyproject.toml, so editing the
# code does not invalidate the (slow) dependency layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep=chr(10))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY README.md ./
COPY bot/ bot/
COPY commands/ commands/
COPY adapters/ adapters/
# A regular (non-editable) install: the final image has no /src.
RUN pip install --no-deps . && opsbot --version

# ---- runtime ----
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    OPSBOT_HTTP_HOST=0.0.0.0 \
    OPSBOT_HTTP_PORT=8080 \
    OPSBOT_DATA_DIR=/var/lib/opsbot

RUN groupadd --system --gid 10001 opsbot \
    && useradd --system --uid 10001 --gid opsbot --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin opsbot

# Same base image and path as the builder, so the venv's interpreter links stay valid.
COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# The demo config; docker-compose.yml mounts its own copy at /etc/opsbot/opsbot.toml.
COPY examples/ /app/examples/
# data_dir: the embedded SQLite audit log, or with PostgreSQL the audit spool (keep it
# on a volume: entries waiting in the spool must survive a container restart).
RUN mkdir -p /etc/opsbot /var/lib/opsbot \
    && chown opsbot:opsbot /var/lib/opsbot \
    && if [ -f /app/examples/opsbot.toml ]; then \
        cp /app/examples/opsbot.toml /etc/opsbot/opsbot.toml; \
    fi

USER opsbot:opsbot
VOLUME /var/lib/opsbot
EXPOSE 8080

# slim images have no curl; urllib raises (non-zero exit) on errors and non-2xx answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('OPSBOT_HTTP_PORT', '8080') + '/health', timeout=4).close()"]

ENTRYPOINT ["opsbot"]
CMD ["run", "--config", "/etc/opsbot/opsbot.toml"]
