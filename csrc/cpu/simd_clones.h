// The build targets baseline x86-64 (SSE2), so that the library runs on any x86-64 CPU. The
// kernels' per-row loops are compiled a second and third time for AVX2 and AVX-512F, and the
// widest the CPU supports is picked when the library loads (GCC function multi-versioning).
// Usage: write the loop as an always-inline template (helpers it calls must be inlined too,
// or they run the baseline code) and add a float overload marked INDEED_SIMD_CLONES that
// calls it; overload resolution picks the clone for float data.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define INDEED_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define INDEED_SIMD_CLONES
#endif
