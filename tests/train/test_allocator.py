"""`keep_freed_memory`: glibc serves a step's large tensors from the heap and keeps the heap when they
are freed (so the next step does not fault their pages in again), and nothing changes where it cannot."""

from __future__ import annotations

import subprocess
import sys

import pytest

from apprentice.train import allocator

# A fresh process: where a 16 MB tensor lands (the heap ends at sbrk(0); mappings lie far above it),
# and whether the heap's end moves back when the tensor is freed (a trim gives the pages back).
_HEAP = """
import ctypes, sys, torch
from apprentice.train.allocator import keep_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.sbrk.restype = ctypes.c_void_p
if sys.argv[1] == "keep":
    assert keep_freed_memory()
t = torch.empty(4_000_000).fill_(1.0)
on_heap = t.data_ptr() < libc.sbrk(0)
end = libc.sbrk(0)
del t
print(on_heap, libc.sbrk(0) == end)
"""


def _heap(mode: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _HEAP, mode], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_memory_serves_large_tensors_from_an_untrimmed_heap():
    # glibc's defaults: a fresh process maps a 16 MB block of its own (mmap threshold 128 KiB) and
    # unmaps it when freed; kept: the block comes from the heap, and the heap keeps it when freed.
    assert _heap("system")[0] == "False"
    assert _heap("keep") == ["True", "True"]


def test_nothing_is_set_where_there_is_no_glibc(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
    monkeypatch.setattr(allocator.sys, "platform", "linux")

    def no_libc(*_a, **_k):
        raise OSError("no libc.so.6")

    monkeypatch.setattr(allocator.ctypes, "CDLL", no_libc)
    assert allocator.keep_freed_memory() is False
