"""Put the CNI plugins and the `vpcni` network config on a node.

`plugins` copies `vpcni` (the static Go binary, build/vpcni) and the `loopback` and `portmap`
plugins (containernetworking-plugins) into the node's CNI bin dir. containerd's CRI runs
`loopback` for every sandbox, and `portmap` gives pods their hostPorts. Each copy is atomic
(temp file in the same directory, fsync, rename), so a runtime never execs a half-written
file, and a plugin already there that is newer (by its VERSION answer) is left alone.

`conflist` writes 10-vpcni.conflist: the template with the VPC CNI's env knobs applied, and
`portmap` chained with the `portMappings` capability. The agent writes it itself once it is
ready (`publish_conflist`), so a node stays NotReady until pods can get addresses; then it
moves aws-node's 10-aws.conflist aside (agent.adopt), which sorts first and would win.
`uninstall` removes the conflist and the vpcni binary (loopback and portmap may serve others).

    python -m agent.cni.install plugins --from build --from /usr/lib/cni /host/opt/cni/bin
    python -m agent.cni.install conflist 10-vpcni.conflist /host/etc/cni/net.d/10-vpcni.conflist
    python -m agent.cni.install uninstall /host/opt/cni/bin /host/etc/cni/net.d
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import adopt
from agent.store import write_atomic

log = logging.getLogger("vpcni.cni.install")

PLUGINS = ("vpcni", "loopback", "portmap")
CONFLIST_NAME = "10-vpcni.conflist"
# libcni 1.1 (containerd 1.6/1.7) reads only `cniVersion` and cannot parse a 1.1.0 result
# (tests/test_libcni.py), so the list says 1.0.0; libcni >= 1.2 picks the highest of
# `cniVersions` that it speaks, which is offered only if every chained plugin speaks it.
CONFLIST_VERSION = "1.0.0"
NEWER_VERSIONS = ("1.1.0",)
VERSION_TIMEOUT_S = 5.0

# Environment knob → (plugin config key, conversion), as the VPC CNI's aws-node applies them.
# Applied in order: the pod MTU is POD_MTU when set, else the ENI MTU (as in the VPC CNI).
CONFLIST_KNOBS: dict[str, tuple[str, Callable[[str], object]]] = {
    "VPCNI_SOCKET": ("socket", str),
    "VPCNI_DEL_SPOOL": ("delSpool", str),
    "AWS_VPC_ENI_MTU": ("mtu", int),
    "POD_MTU": ("mtu", int),
    "AWS_VPC_K8S_CNI_VETHPREFIX": ("vethPrefix", str),
    "AWS_VPC_K8S_PLUGIN_LOG_FILE": ("pluginLogFile", str),
    "AWS_VPC_K8S_PLUGIN_LOG_LEVEL": ("pluginLogLevel", str),
}


@dataclass(frozen=True, slots=True)
class Paths:
    """Where the node's CNI directories are mounted; aws-node's variable names come first."""

    bin_dir: Path
    conf_dir: Path
    template: Path | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Paths:
        """HOST_CNI_BIN_PATH / HOST_CNI_CONFDIR_PATH (aws-node), else HOST_CNI_BIN_DIR /
        HOST_CNI_CONF_DIR, else the DaemonSet's mounts; VPCNI_CONFLIST_TEMPLATE, if set, makes
        the agent publish the conflist once ready."""
        bin_dir = env.get("HOST_CNI_BIN_PATH") or env.get("HOST_CNI_BIN_DIR") or "/host/opt/cni/bin"
        conf_dir = (
            env.get("HOST_CNI_CONFDIR_PATH")
            or env.get("HOST_CNI_CONF_DIR")
            or "/host/etc/cni/net.d"
        )
        template = env.get("VPCNI_CONFLIST_TEMPLATE")
        return cls(Path(bin_dir), Path(conf_dir), Path(template) if template else None)


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@dataclass(frozen=True, slots=True, order=True)
class PluginVersion:
    """What a plugin binary says about itself; ordered spec version first, then release."""

    spec: tuple[int, ...]
    release: tuple[int, ...]
    supported: tuple[str, ...]


def plugin_version(path: Path) -> PluginVersion | None:
    """Ask `path` for CNI VERSION (and its release: `--version` for vpcni, the About line that
    containernetworking-plugins print when CNI_COMMAND is empty); None if it cannot answer."""
    try:
        done = subprocess.run(
            [str(path)],
            input=b'{"cniVersion":"0.3.0"}',
            env={"CNI_COMMAND": "VERSION"},
            capture_output=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
        )
        about = subprocess.run(
            [str(path), "--version"],
            stdin=subprocess.DEVNULL,
            env={"CNI_COMMAND": ""},
            capture_output=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
        )
        doc = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    supported = doc.get("supportedVersions") if isinstance(doc, dict) else None
    if done.returncode != 0 or not isinstance(supported, list) or not supported:
        return None
    versions = tuple(str(v) for v in supported)
    # The first line only: skel's second one lists the CNI spec versions, not the release.
    first = (about.stdout + about.stderr).decode(errors="replace").partition("\n")[0]
    release = re.search(r"\bv?(\d+\.\d+\.\d+)\b", first)
    return PluginVersion(
        spec=max(_version_key(v) for v in versions),
        release=_version_key(release.group(1)) if release else (),
        supported=versions,
    )


def install_plugin(source: Path, dest: Path) -> bool:
    """Copy `source` to `dest` atomically unless `dest` is the same or newer; True if copied."""
    data = source.read_bytes()
    if dest.is_file() and not dest.is_symlink():
        if dest.read_bytes() == data:
            return False
        have, ours = plugin_version(dest), plugin_version(source)
        if have is not None and ours is not None and have > ours:
            log.info("newer plugin kept", extra={"plugin": str(dest), "version": str(have)})
            return False
    write_atomic(dest, data, mode=0o755)
    return True


def find_plugin(name: str, sources: Sequence[Path]) -> Path:
    """The first `sources/<name>` that exists."""
    for directory in sources:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"plugin {name} not found in {', '.join(map(str, sources))}")


def install_plugins(sources: Sequence[Path], bin_dir: Path) -> list[str]:
    """Install every plugin of PLUGINS from `sources` into `bin_dir`; the names copied."""
    return [name for name in PLUGINS if install_plugin(find_plugin(name, sources), bin_dir / name)]


def render_conflist(
    template: Mapping[str, object],
    env: Mapping[str, str],
    versions: Mapping[str, PluginVersion | None] | None = None,
) -> dict[str, object]:
    """`template` with the set knobs of `env` applied to its `vpcni` plugin entry, and
    `cniVersions` offering the newer spec versions only where every chained plugin (per
    `versions`, by type; None: unknown) speaks them."""
    # A deep copy, so the template stays untouched.
    conflist: dict[str, object] = json.loads(json.dumps(template))
    plugins = conflist.get("plugins")
    chain = [p for p in (plugins if isinstance(plugins, list) else []) if isinstance(p, dict)]
    entries = [p for p in chain if p.get("type") == "vpcni"]
    if len(entries) != 1:
        raise ValueError("conflist needs exactly one plugin of type vpcni")
    for knob, (key, convert) in CONFLIST_KNOBS.items():
        if env.get(knob):
            try:
                entries[0][key] = convert(env[knob])
            except ValueError as exc:
                raise ValueError(f"{knob}={env[knob]!r}: {exc}") from exc
    if versions is not None:
        offered = [CONFLIST_VERSION]
        for newer in NEWER_VERSIONS:
            speakers = [versions.get(str(p.get("type"))) for p in chain]
            if all(v is not None and newer in v.supported for v in speakers):
                offered.append(newer)
        conflist["cniVersion"] = CONFLIST_VERSION
        conflist["cniVersions"] = offered
    return conflist


def install_conflist(
    template: Path, dest: Path, env: Mapping[str, str], bin_dir: Path | None = None
) -> dict[str, object]:
    """Write the conflist rendered from `template` and `env` to `dest`, atomically; with
    `bin_dir`, `cniVersions` follows what the plugins installed there speak."""
    doc = json.loads(template.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError(f"{template}: a conflist is a JSON object")
    versions = None
    if bin_dir is not None:
        types = {str(p.get("type")) for p in doc.get("plugins", []) if isinstance(p, dict)}
        versions = {t: plugin_version(bin_dir / t) for t in types}
    conflist = render_conflist(doc, env, versions)
    write_atomic(dest, (json.dumps(conflist, indent=2) + "\n").encode(), mode=0o644)
    return conflist


def publish_conflist(env: Mapping[str, str]) -> Path | None:
    """The agent's call once it is ready: write the conflist if VPCNI_CONFLIST_TEMPLATE says
    from what (the DaemonSet's entrypoint sets it); the path written, or None."""
    paths = Paths.from_env(env)
    if paths.template is None:
        return None
    dest = paths.conf_dir / CONFLIST_NAME
    install_conflist(paths.template, dest, env, paths.bin_dir)
    log.info("CNI network config written", extra={"path": str(dest)})
    # Only now: a node switching from aws-node must never be without a network config.
    adopt.retire_aws_node_conflist(paths.conf_dir)
    return dest


def uninstall(bin_dir: Path, conf_dir: Path) -> list[Path]:
    """Remove the conflist first (no new pods), then the vpcni binary; the paths removed."""
    removed = []
    for path in (conf_dir / CONFLIST_NAME, bin_dir / "vpcni"):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `plugins`, `conflist` or `uninstall` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m agent.cni.install", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    plugins = sub.add_parser("plugins", help="copy vpcni, loopback and portmap into a bin dir")
    plugins.add_argument("--from", dest="sources", type=Path, action="append", required=True)
    plugins.add_argument("bin_dir", type=Path)
    conf = sub.add_parser("conflist", help="write the network config with env knobs applied")
    conf.add_argument("--bin-dir", type=Path, help="ask the plugins there for their versions")
    conf.add_argument("template", type=Path)
    conf.add_argument("dest", type=Path)
    remove = sub.add_parser("uninstall", help="remove the conflist and the vpcni plugin")
    remove.add_argument("bin_dir", type=Path)
    remove.add_argument("conf_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.what == "plugins":
            copied = install_plugins(args.sources, args.bin_dir)
            print(f"vpcni install: {args.bin_dir}: copied {', '.join(copied) or 'nothing'}")
        elif args.what == "conflist":
            install_conflist(args.template, args.dest, os.environ, args.bin_dir)
        else:
            for path in uninstall(args.bin_dir, args.conf_dir):
                print(f"vpcni uninstall: removed {path}")
    except (OSError, ValueError) as exc:
        print(f"vpcni install: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
