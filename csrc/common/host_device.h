// Shared by the CPU (.cpp) and CUDA (.cu) translation units: one spelling of the qualifier that
// lets the per-element math in <op>_math.h be called from both.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SSDF_HOST_DEVICE __host__ __device__
#else
#define SSDF_HOST_DEVICE
#endif
