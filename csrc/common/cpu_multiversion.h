// CPU hot loops are compiled for several instruction sets and picked at load time (GCC function
// multiversioning): the extension is built for baseline x86-64, but AVX2+FMA or AVX-512 machines
// should not run 4-wide SSE2 code. Clones are chosen by CPU features (not "arch=", which GCC picks
// by CPU model name and so never selects on AMD). Elsewhere (clang, ARM, macOS) the attribute is empty.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SSDF_CPU_MULTIVERSION __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define SSDF_CPU_MULTIVERSION
#endif
