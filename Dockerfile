# vpcni node image (deploy/vpcni.yaml): the agent in a venv on Debian's python3, bcc from Debian
# (never PyPI) with only the kernel headers it compiles against, the CNI plugins the installer
# puts on the node, and the entrypoint. `docker build .` with a registry; `make image` without
# (scripts/image.sh). What it weighs and why: docs/operations.md.

# The agent and its PyPI dependencies in /opt/venv. binutils: strip the wheels' shared objects.
FROM debian:bookworm-slim AS python
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml ./
# Dependencies first, from pyproject.toml alone: a code change does not reinstall them. Behind a
# TLS-inspecting proxy or with a private index, pass pip's config (and the CA it names) as build
# secrets: `--secret id=pip.conf,src=... --secret id=pip-ca,src=...` (scripts/image.sh does).
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip-ca \
    python3 -m venv /opt/venv \
 && python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print(*p["project"]["dependencies"], *p["build-system"]["requires"], sep="\n")' >requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r requirements.txt \
 && find /opt/venv -name '*.so' -exec strip --strip-unneeded {} + \
 && cd /opt/venv/lib/python3*/site-packages/botocore/data \
 && find . -mindepth 1 -maxdepth 1 -type d ! -name ec2 ! -name sts -exec rm -rf {} +
# Above: debug symbols (uvloop's alone are 12 MB) and the API models of the ~450 AWS services the
# agent never calls go; it calls EC2, and STS when IRSA gives it a web identity token.
COPY agent ./agent
COPY datapath ./datapath
# No network here (the build backend came with the dependencies); pip and setuptools only
# install, the running agent needs neither. Bytecode compiled once here (hash-checked, so layer
# mtimes do not matter): the agent and every exec probe would otherwise compile at each start.
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
      --no-build-isolation . \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} + \
 && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib

# Kernel headers for bcc, without the compiler and kbuild the header package depends on (bcc
# brings its own clang), and with only this architecture's arch/ tree.
FROM debian:bookworm-slim AS headers
RUN apt-get update \
 && arch=$(dpkg --print-architecture) \
 && karch=$(case "$arch" in amd64) echo x86 ;; arm64) echo arm64 ;; *) echo "$arch" ;; esac) \
 && build=$(apt-cache depends "linux-headers-$arch" | sed -n 's/.*Depends: //p' | head -1) \
 && common=$(apt-cache depends "$build" | sed -n 's/.*Depends: \(linux-headers-.*-common\)$/\1/p') \
 && cd /tmp && apt-get download "$build" "$common" \
 && mkdir /out && for deb in ./*.deb; do dpkg-deb -x "$deb" /out; done \
 && find /out/usr/src/*-common/arch -mindepth 1 -maxdepth 1 ! -name "$karch" -exec rm -rf {} + \
 && mv /out/lib /out/usr/lib \
 && rm -rf /out/usr/share /out/usr/src/*/Module.symvers /var/lib/apt/lists/*

# The vpcni CNI plugin: a static Go binary (standard library only, nothing to download), the
# same build as `make plugin`.
FROM debian:bookworm-slim AS plugin
RUN apt-get update \
 && apt-get install -y --no-install-recommends golang-go \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml ./
COPY plugin ./plugin
RUN version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml) \
 && cd plugin \
 && CGO_ENABLED=0 GOFLAGS= GOPROXY=off GOCACHE=/tmp/gocache GOPATH=/tmp/gopath \
    go build -trimpath -ldflags "-s -w -X main.version=$version" -o /out/vpcni .

# loopback and portmap: containerd's CRI needs the first, hostPort the second (chained).
FROM debian:bookworm-slim AS cni
RUN apt-get update \
 && apt-get install -y --no-install-recommends containernetworking-plugins \
 && rm -rf /var/lib/apt/lists/*

FROM debian:bookworm-slim
# python3: the same interpreter the venv was made with. iproute2: `ip` for operators (and the
# emulator's sandbox node). Nothing else: the agent makes no iptables rules and boto3 carries its
# own CA bundle.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-bpfcc iproute2 \
 && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/*.log
# /usr only: /lib is a symlink to usr/lib in the base (merged /usr), a copy must not replace it.
COPY --from=headers /out/usr/ /usr/
# Where deploy/install-cni.sh looks for the plugins it puts on the node.
COPY --from=plugin /out/vpcni /opt/vpcni/
COPY --from=cni /usr/lib/cni/loopback /usr/lib/cni/portmap /usr/lib/cni/
COPY --from=python /opt/venv /opt/venv
# bcc's Python side is ctypes over Debian's libbcc: link only that package into the venv
# (all of dist-packages would shadow the venv's own), as scripts/bootstrap.sh does.
RUN ln -s /usr/lib/python3/dist-packages/bcc \
      "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bcc"
COPY deploy/10-vpcni.conflist deploy/install-cni.sh deploy/entrypoint.sh deploy/node-init.sh /opt/vpcni/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["/opt/vpcni/entrypoint.sh"]
CMD ["vpcni-agent"]
