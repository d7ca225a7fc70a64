"""A pod's network namespace, opened once and proven to be a pod's.

A runtime may hand over any path (containerd's `netns_mounts_under_state_dir` puts them under
its state dir). The path is opened once; every later step uses that fd, so no one can swap the
file between the check and the use. The fd must be a network namespace (the nsfs
`NS_GET_NSTYPE` ioctl answers CLONE_NEWNET) and must not be the node's own: the agent's, pid 1's
or the sandbox node's host netns, compared by device and inode.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterable

from datapath.port import DatapathError

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3)
# Where the node's own network namespaces are: ours (the main thread's), init's.
NODE_NETNS_PATHS = ("/proc/self/ns/net", "/proc/1/ns/net")


def identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a netns file, None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def node_netns(host_netns_path: str | None = None) -> frozenset[tuple[int, int]]:
    """Identities of the namespaces no pod may be given: the agent's, init's and the sandbox
    node's host netns (`--host-netns`)."""
    paths: Iterable[str] = (*NODE_NETNS_PATHS, *((host_netns_path,) if host_netns_path else ()))
    return frozenset(i for i in map(identity, paths) if i is not None)


def open_pod_netns(path: str, forbidden: frozenset[tuple[int, int]]) -> int:
    """Open `path` once and return the fd if it is a network namespace that is not the node's.

    DatapathError(missing_netns=True) when nothing is there; DatapathError(refused=True) when
    it is not a netns or is one of `forbidden`. The caller closes the fd.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except (FileNotFoundError, ProcessLookupError) as e:
        raise DatapathError(f"netns {path} does not exist", missing_netns=True) from e
    except OSError as e:
        raise DatapathError(f"netns {path} cannot be opened: {e.strerror}", refused=True) from e
    try:
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError as e:
            if e.errno not in (errno.ENOTTY, errno.EINVAL):
                raise
            kind = 0
        if kind != CLONE_NEWNET:
            raise DatapathError(f"{path} is not a network namespace", refused=True)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) in forbidden:
            raise DatapathError(f"{path} is the node's own network namespace", refused=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def netns_alive(path: str) -> bool:
    """Is `path` still a network namespace (not missing, not a leftover unmounted file)?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)
