#!/usr/bin/env bash
# `make image`: build the repo's Dockerfile on this machine with Debian's packages only (no
# container registry is reachable here). A user with registry access runs `docker build .`
# instead; the Dockerfile is the same.
#
# 1. The base image the Dockerfile's FROM names (debian:<suite>-slim) is made with debootstrap
#    from the Debian mirror apt already uses, trimmed like Docker's slim images, and committed
#    into a private buildah store under build/image/ (cached: made once, ~30 s).
# 2. `buildah bud --isolation chroot --layers` builds the unchanged Dockerfile on it (layers
#    cached, so a code change rebuilds only the last steps).
# 3. `buildah push` writes build/vpcni-image.tar (docker-archive), which `ctr images import`
#    and `docker load` take; rewritten only when the image changed.
#
# Env: IMAGE (default: the DaemonSet's image), DEBIAN_MIRROR (default: apt's), VPCNI_BUILD_DIR.
# Needs root (debootstrap, chroot builds); installs debootstrap and buildah if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-$(sed -n 's/^ *image: *//p' deploy/vpcni.yaml | head -1)}
OUT=${VPCNI_BUILD_DIR:-build}
STORE=$OUT/image
TAR=$OUT/vpcni-image.tar
# Bump when make_base changes, so cached bases are made again.
BASE_RECIPE=2

log() { echo "image: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "needs root (debootstrap and buildah's chroot builds); use 'docker build .' elsewhere"
  exit 1
fi
missing=""
for p in debootstrap buildah; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  log "apt-get install$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq $missing >/dev/null
fi

mkdir -p "$STORE"
STORE=$(cd "$STORE" && pwd)
# A private store, so parallel checkouts never share state. overlay where the kernel has it
# (vfs copies the whole tree at every step: a 4x slower build here).
DRIVER=${STORAGE_DRIVER:-$(grep -qw overlay /proc/filesystems && echo overlay || echo vfs)}
B=(buildah --storage-driver "$DRIVER" --root "$STORE/storage-$DRIVER" --runroot "$STORE/run-$DRIVER")
# Working containers of an interrupted build hold whole trees.
"${B[@]}" rm --all >/dev/null 2>&1 || true

# The one external base the Dockerfile names, e.g. debian:bookworm-slim.
base=$(awk 'toupper($1) == "FROM" { print $2 }' Dockerfile | grep ':' | sort -u)
if [ "$(echo "$base" | wc -l)" != 1 ] || [[ $base != debian:* ]]; then
  log "expected one debian:<suite>[-slim] base in Dockerfile's FROM lines, got: $base"
  exit 1
fi
suite=${base#debian:}
suite=${suite%-slim}
qualified=docker.io/library/$base

# The mirror apt uses (deb822 .sources or a one-line sources.list).
mirror_of() {
  local suite=$1
  cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v s="$suite" '
    /^URIs:/ { uri = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) { print uri; exit } }'
  awk -v s="$suite" '$1 == "deb" && $3 == s { print $2; exit }' /etc/apt/sources.list 2>/dev/null
  true
}
MIRROR=${DEBIAN_MIRROR:-$(mirror_of "$suite" | head -1)}
SECURITY=${DEBIAN_SECURITY_MIRROR:-$(mirror_of "$suite-security" | head -1)}
if [ -z "$MIRROR" ]; then
  log "no Debian mirror for $suite in /etc/apt/sources.list(.d); set DEBIAN_MIRROR"
  exit 1
fi

make_base() {
  local root=$STORE/rootfs-$suite
  rm -rf "$root"
  log "debootstrap --variant=minbase $suite from $MIRROR"
  debootstrap --variant=minbase "$suite" "$root" "$MIRROR" >"$STORE/debootstrap.log" 2>&1 || {
    tail -20 "$STORE/debootstrap.log" >&2
    exit 1
  }
  # What Docker's debian:*-slim does: no docs, man pages or translations in later installs,
  # apt's cache not kept, the same three suites.
  cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$root"/usr/share/{man,info,locale,lintian}/* "$root"/var/cache/apt/*.bin \
    "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  local clean='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"'
  {
    echo "DPkg::Post-Invoke { $clean; };"
    echo "APT::Update::Post-Invoke { $clean; };"
    echo 'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";'
  } >"$root/etc/apt/apt.conf.d/docker-clean"
  rm -f "$root/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' \
      "$MIRROR" "$suite" "$suite"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ -n "$SECURITY" ]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' \
        "$SECURITY" "$suite"
      printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
  } >"$root/etc/apt/sources.list.d/debian.sources"
  # Device nodes and mounts belong to the runtime, not the image.
  rm -rf "${root:?}"/dev/* "${root:?}"/proc/* "${root:?}"/sys/* "${root:?}"/run/* "${root:?}"/tmp/*
  local ctr
  ctr=$("${B[@]}" from --pull=false scratch)
  local mnt
  mnt=$("${B[@]}" mount "$ctr")
  cp -a "$root"/. "$mnt"/
  "${B[@]}" umount "$ctr" >/dev/null
  "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd bash "$ctr"
  "${B[@]}" config --label "vpcni.base-recipe=$BASE_RECIPE" "$ctr"
  "${B[@]}" commit --rm -q "$ctr" "$qualified" >/dev/null
  rm -rf "$root"
}

start=$(date +%s)
recipe=$("${B[@]}" inspect --type image --format '{{index .OCIv1.Config.Labels "vpcni.base-recipe"}}' \
  "$qualified" 2>/dev/null || true)
if [ "$recipe" != "$BASE_RECIPE" ]; then
  make_base
  log "base $qualified made in $(($(date +%s) - start)) s"
fi

# Where PyPI is reached through a TLS-inspecting proxy whose CA only this host trusts (pip is
# configured with a `cert`), the Dockerfile's pip step gets that bundle and a pip.conf naming it
# as build secrets: mounted for that one step, in no layer.
secrets=()
cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
if [ -n "$cert" ] && [ -f "$cert" ]; then
  printf '[global]\ncert = /run/secrets/pip-ca\n' >"$STORE/pip.conf"
  secrets+=(--secret "id=pip.conf,src=$STORE/pip.conf" --secret "id=pip-ca,src=$(realpath "$cert")")
fi

t=$(date +%s)
log "building $IMAGE"
"${B[@]}" bud --isolation chroot --layers --pull=false "${secrets[@]}" -q -t "$IMAGE" \
  -f Dockerfile . \
  >"$STORE/bud.log" 2>&1 || {
  tail -40 "$STORE/bud.log" >&2
  exit 1
}
id=$("${B[@]}" inspect --type image --format '{{.FromImageID}}' "$IMAGE")
log "built $IMAGE ${id:0:12} in $(($(date +%s) - t)) s"
if [ ! -s "$TAR" ] || [ "$(cat "$TAR.id" 2>/dev/null)" != "$id" ]; then
  rm -f "$TAR" "$TAR.id"
  "${B[@]}" push -q "$IMAGE" "docker-archive:$TAR:$IMAGE"
  echo "$id" >"$TAR.id"
fi
log "$TAR ($(du -m "$TAR" | cut -f1) MiB) ready in $(($(date +%s) - start)) s"
