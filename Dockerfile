# meshproxy: one image, the sidecar by default (`meshproxy run`).
#
#   docker build -t meshproxy .
#   docker run --rm -v $PWD/mesh.yaml:/etc/meshproxy/config.yaml:ro \
#       -p 15000:15000 -p 15001:15001 -p 15006:15006 meshproxy
#
# The same image runs the control plane:
#   docker run --entrypoint meshcontrol --no-healthcheck -e MESHCONTROL_HOST=0.0.0.0 \
#       -p 15010:15010 meshproxy run
# (its state goes to /var/lib/meshcontrol; mount a volume there to keep it).
#
# The mounted bootstrap must bind its listeners and admin on 0.0.0.0 to be
# reachable from outside the container; the health check asks the admin port
# (15000) on 127.0.0.1 from inside.

# --- builder: compile the Cython fast path into a wheel --------------------------------
FROM python:3.11-slim AS builder

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
# Wheels for meshproxy (with the compiled extension) and every dependency, so the
# final stage installs offline and needs no compiler.  The build fails here if
# the extension was not compiled into the wheel.
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
    && python -c "import glob, sys, zipfile; \
whl = glob.glob('/wheels/meshproxy-*.whl')[0]; \
names = zipfile.ZipFile(whl).namelist(); \
sys.exit(0 if any(n.startswith('meshproxy/_fastpath') and n.endswith('.so') for n in names) \
else 'the wheel has no compiled meshproxy/_fastpath extension')"

# --- final: the runtime only --------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MESHCONTROL_DATA_DIR=/var/lib/meshcontrol

COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index --find-links=/tmp/wheels meshproxy \
    && rm -rf /tmp/wheels \
    && python -c "from meshproxy import fastpath; assert fastpath.IMPLEMENTATION == 'cython'" \
    && groupadd --system --gid 10001 meshproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin meshproxy \
    && mkdir -p /etc/meshproxy /var/lib/meshcontrol \
    && chown 10001:10001 /var/lib/meshcontrol

USER 10001:10001

# admin, outbound, inbound
EXPOSE 15000 15001 15006

HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:15000/ready', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["meshproxy"]
CMD ["run", "--config", "/etc/meshproxy/config.yaml"]
