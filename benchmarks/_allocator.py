"""Imported by every benchmark before torch: the CPU allocator setting that `import stylesdf_fast`
makes for our commands (large tensors on transparent huge pages, PyTorch's THP_MEM_ALLOC_ENABLE,
read once when torch starts), so that benchmarks measure what the commands run with. Run with
THP_MEM_ALLOC_ENABLE=0 to measure glibc's default allocation instead; the results record which.
"""
import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
