"""Host memory: kept for reuse while a request runs, given back to the system when it ends.

glibc serves large allocations (above a threshold that adapts up to 32 MB) with fresh pages from
the system and returns them when freed, and trims its heap as soon as its free top grows. A
ControlNet's activations at the image's full resolution are allocated and freed at every step,
so each step faults in zeroed pages again: on a CPU, a tiny SD ControlNet request at 512x512 took
1.26 million page faults and 3.5 s on the main thread, 29 thousand and 2.5 s once freed memory
stays in the heap (reuse_freed_memory, at setup).

After the request, the heap's free pages go back (give_back): otherwise the server's RSS would
stay at the peak of its largest request (a 36-megapixel upload refused after decoding left
~370 MB behind, request after request). malloc_trim(0) returns the free pages of every heap, in
milliseconds. Elsewhere than glibc both do nothing.
"""

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
HEAP_THRESHOLD = 1024**3  # allocations below it come from the heap; its free top is kept


@functools.cache
def _libc() -> "ctypes.CDLL | None":
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return library if hasattr(library, "malloc_trim") else None  # glibc


def reuse_freed_memory() -> None:
    if libc := _libc():
        libc.mallopt(M_MMAP_THRESHOLD, HEAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, HEAP_THRESHOLD)


def give_back() -> None:
    if libc := _libc():
        libc.malloc_trim(0)
