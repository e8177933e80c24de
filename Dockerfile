# sapg: the gateway in a slim Python image, run as a non-root user.
#
#   docker build -t sapg .
#   docker run -p 8787:8787 -v "$PWD/gateway.json:/config/gateway.json:ro" \
#       -e SAPG_CONFIG=/config/gateway.json sapg --workers 2
#
# Arguments after the image name are added to `sapg serve` (see docs/deployment.md).
# Port 8787 is the public port; 9090 the admin endpoint (/metrics, /ready, /live): publish
# it only to your monitoring and your orchestrator's probes, never to clients.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY sapg_core ./sapg_core
COPY transports ./transports
RUN pip install . && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /app --create-home --shell /usr/sbin/nologin sapg
WORKDIR /app
USER sapg

EXPOSE 8787 9090

# The admin endpoint's liveness answer, with the interpreter the image already has (no curl).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/live', timeout=2).status != 200)"]

# SIGTERM (docker stop) drains: in-flight requests get --grace seconds (default 10), so give
# `docker stop --time` more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sapg", "serve", "--host", "0.0.0.0", "--admin-host", "0.0.0.0", "--admin-port", "9090"]
CMD []
