// Large CPU outputs on transparent huge pages. A fresh tensor of hundreds of MiB (the volume
// renderer's raw gradient: 390 MiB at the stage-1 shape) comes straight from mmap, and writing it
// costs one page fault per 4 KiB page: about 100,000 faults, most of the op's time, unless the
// process runs with PyTorch's THP_MEM_ALLOC_ENABLE=1 (which `import stylesdf_fast` sets only when it
// comes before `import torch`). Advising the tensor's memory before its first write makes Linux back
// it with 2 MiB pages where the system allows it (transparent_hugepage "madvise" or "always").
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace stylesdf_fast {

// Best effort: asks for huge pages under the 2 MiB-aligned interior of a CPU tensor of at least
// 8 MiB; does nothing elsewhere (other systems, CUDA tensors, smaller tensors, a refused advice).
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(1) << 21;
  if (!t.is_cpu() || t.nbytes() < 4 * kHugePage) return;
  const uintptr_t start = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const uintptr_t begin = (start + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (start + t.nbytes()) & ~(kHugePage - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// at::empty for an output the kernel then writes in full.
inline at::Tensor empty_output(at::IntArrayRef shape, const at::TensorOptions& options) {
  at::Tensor t = at::empty(shape, options);
  advise_huge_pages(t);
  return t;
}

}  // namespace stylesdf_fast
