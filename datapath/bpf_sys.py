"""The bpf(2) calls the agent needs on pinned objects, over ctypes: no bcc, no LLVM.

The programs are compiled and pinned by a short-lived child (`datapath.bpf_loader`, which does
use bcc); the agent opens the pins (BPF_OBJ_GET) and reads and writes maps with the plain
element commands. Keys and values are ctypes structures laid out as in vpcni.h/nat.h.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from functools import cache
from typing import Any

_SYS_BPF = 321  # x86_64
_MAP_LOOKUP_ELEM = 1
_MAP_UPDATE_ELEM = 2
_MAP_DELETE_ELEM = 3
_MAP_GET_NEXT_KEY = 4
_OBJ_PIN = 6
_OBJ_GET = 7
_OBJ_GET_INFO_BY_FD = 15
ANY = 0  # BPF_ANY
NOEXIST = 1  # BPF_NOEXIST
_PERCPU_TYPES = frozenset({5, 6, 10})  # percpu_hash, percpu_array, lru_percpu_hash

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _ElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # next_key for GET_NEXT_KEY
        ("flags", ctypes.c_uint64),
    ]


class _ObjAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    ret = _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def obj_get(path: str) -> int:
    """An fd for a pinned map or program."""
    raw = path.encode()
    attr = _ObjAttr(pathname=ctypes.cast(ctypes.c_char_p(raw), ctypes.c_void_p).value or 0)
    try:
        return _bpf(_OBJ_GET, attr)
    except OSError as e:
        raise OSError(e.errno, f"{path}: {e.strerror}") from None


def obj_pin(fd: int, path: str) -> None:
    """Pin a map or program fd at `path` (bpffs)."""
    raw = path.encode()
    attr = _ObjAttr(pathname=ctypes.cast(ctypes.c_char_p(raw), ctypes.c_void_p).value or 0)
    attr.bpf_fd = fd
    _bpf(_OBJ_PIN, attr)


@cache
def possible_cpus() -> int:
    """How many per-CPU slots a per-CPU map value has (the kernel's possible CPUs)."""
    with open("/sys/devices/system/cpu/possible") as f:
        spec = f.read().strip()
    count = 0
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class PinnedMap:
    """A pinned map, its keys and values as ctypes structures (checked against the kernel's
    sizes when opened: a layout that drifted from the C fails here, not in a packet)."""

    def __init__(self, path: str, key_type: type[Any], value_type: type[Any]) -> None:
        self.path = path
        self.fd = obj_get(path)
        info = _MapInfo()
        attr = _InfoAttr(bpf_fd=self.fd, info_len=ctypes.sizeof(info))
        attr.info = ctypes.addressof(info)
        _bpf(_OBJ_GET_INFO_BY_FD, attr)
        self.key_type = key_type
        self.value_type = value_type
        self.percpu = info.type in _PERCPU_TYPES
        self.max_entries = int(info.max_entries)
        if (ctypes.sizeof(key_type), ctypes.sizeof(value_type)) != (
            info.key_size,
            info.value_size,
        ):
            os.close(self.fd)
            raise ValueError(
                f"{path}: key/value of {info.key_size}/{info.value_size} bytes, expected "
                f"{ctypes.sizeof(key_type)}/{ctypes.sizeof(value_type)}"
            )
        # Per-CPU values come as one slot per possible CPU, each rounded up to 8 bytes.
        self._value_buffer: type[Any] = value_type * possible_cpus() if self.percpu else value_type

    def _elem(self, key: Any, value: Any = None, flags: int = 0) -> _ElemAttr:
        attr = _ElemAttr(map_fd=self.fd, flags=flags)
        attr.key = ctypes.addressof(key)
        if value is not None:
            attr.value = ctypes.addressof(value)
        return attr

    def get(self, key: Any) -> Any | None:
        """The value (per-CPU: an array of them) for `key`, or None."""
        value = self._value_buffer()
        try:
            _bpf(_MAP_LOOKUP_ELEM, self._elem(key, value))
        except FileNotFoundError:
            return None
        return value

    def put(self, key: Any, value: Any, flags: int = ANY) -> None:
        """Insert or update (or, with NOEXIST, insert only)."""
        _bpf(_MAP_UPDATE_ELEM, self._elem(key, value, flags))

    def delete(self, key: Any) -> bool:
        """Remove `key`; False if it was not there."""
        try:
            _bpf(_MAP_DELETE_ELEM, self._elem(key))
        except FileNotFoundError:
            return False
        return True

    def keys(self) -> Iterator[Any]:
        """Every key (a snapshot walk; entries may change meanwhile)."""
        key: Any = None
        while True:
            nxt = self.key_type()
            attr = _ElemAttr(map_fd=self.fd)
            attr.key = 0 if key is None else ctypes.addressof(key)
            attr.value = ctypes.addressof(nxt)
            try:
                _bpf(_MAP_GET_NEXT_KEY, attr)
            except FileNotFoundError:
                return
            yield nxt
            key = nxt

    def items(self) -> Iterator[tuple[Any, Any]]:
        """Every (key, value) still there when read."""
        for key in self.keys():
            value = self.get(key)
            if value is not None:
                yield key, value

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def close(self) -> None:
        """Close the fd (the pin stays)."""
        os.close(self.fd)
