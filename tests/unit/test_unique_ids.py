"""Tags, Call-IDs and branches come from ``pj_generate_unique_string`` in our pjproject build
(patch 0007: random version 4 UUIDs from a per-thread getrandom() buffer instead of libuuid's
six system calls per id). Checked against the real library: the format, no repeats across a
buffer refill, between threads, and between a parent and a child forked with a used buffer."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import threading

# the module's C library only (no pjsua2 import, no Endpoint): the function needs no pj_init()
_SPEC = importlib.util.find_spec("_pjsua2")
assert _SPEC is not None and _SPEC.origin, "the pjsua2 build is not installed (scripts/setup.sh --test)"
LIB = ctypes.CDLL(_SPEC.origin)
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t)]


LIB.pj_generate_unique_string.argtypes = [ctypes.POINTER(PjStr)]
LIB.pj_generate_unique_string.restype = ctypes.POINTER(PjStr)


def unique_ids(n: int) -> list[str]:
    buf = ctypes.create_string_buffer(64)
    out = []
    for _ in range(n):
        s = PjStr(ctypes.cast(buf, ctypes.c_char_p), 0)
        LIB.pj_generate_unique_string(ctypes.byref(s))
        out.append(buf.raw[: s.slen].decode("ascii"))
    return out


def test_ids_are_random_uuids_without_repeats_across_buffer_refills() -> None:
    ids = unique_ids(2000)  # 16 bytes each from 4096-byte buffers: about 8 refills
    assert all(UUID4.fullmatch(i) for i in ids), [i for i in ids if not UUID4.fullmatch(i)][:3]
    assert len(set(ids)) == len(ids)


def test_threads_draw_from_their_own_buffers() -> None:
    results: list[list[str]] = [[] for _ in range(4)]

    def draw(slot: int) -> None:
        results[slot] = unique_ids(300)

    threads = [threading.Thread(target=draw, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ids = [i for r in results for i in r]
    assert len(ids) == 1200
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    unique_ids(3)  # this thread's buffer is filled and partly used: a child inherits a copy
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, "\n".join(unique_ids(20)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode().split("\n")
    os.waitpid(pid, 0)
    parent = unique_ids(20)
    assert len(child) == 20 and all(UUID4.fullmatch(i) for i in child)
    assert not set(child) & set(parent)
