# vpcni node image: the agent in a venv, bcc from Debian (never PyPI), and the entrypoint that
# installs the CNI plugin + config on the node before becoming the agent (deploy/vpcni.yaml).
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml ./
COPY agent ./agent
COPY datapath ./datapath
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

FROM debian:bookworm-slim
# Same base as the build stage, so the venv's python symlink points at this python3.
# Kernel headers: bcc compiles the tc programs; deploy/entrypoint.sh points it at these.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-bpfcc libbpfcc "linux-headers-$(dpkg --print-architecture)" \
      iproute2 iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
# bcc's Python side is ctypes over Debian's libbcc: link only that package into the venv
# (all of dist-packages would shadow the venv's own), as scripts/bootstrap.sh does.
RUN ln -s /usr/lib/python3/dist-packages/bcc \
      "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bcc"
COPY deploy/10-vpcni.conflist deploy/install-cni.sh deploy/entrypoint.sh /opt/vpcni/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["/opt/vpcni/entrypoint.sh"]
CMD ["vpcni-agent"]
