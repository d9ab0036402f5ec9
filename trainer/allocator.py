"""glibc's malloc, told to keep the memory a training loop frees and takes again.

Every minibatch allocates and frees the same few large tensors (activations and gradients,
megabytes each). By default glibc gives such blocks back to the kernel when they are freed
(above a trim threshold at the top of the heap, or as separate mappings), so the next minibatch
takes page faults on every page of them again: on a 2-core VM the copies and matmuls that first
touch those pages ran several times slower than on reused memory. Keeping freed blocks up to
32 MB in the heap is what PyTorch's own CUDA caching allocator does for device memory.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (glibc's largest allowed mmap threshold on 64-bit).
HEAP_BLOCKS = 32 << 20
#: Free memory at the heap's top is given back to the kernel only past this much.
KEEP = 2**31 - 1


def keep_freed_memory() -> bool:
    """Set glibc's thresholds so freed blocks up to HEAP_BLOCKS stay in the process for reuse
    (both at once: setting one turns off glibc's own adjustment of the other, left at 128 KB).
    Returns whether it applied: False off Linux or with another C library."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP))
