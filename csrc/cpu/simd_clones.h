// The build targets baseline x86-64 (SSE2): the wheel must run anywhere. The compute-bound
// loops are compiled a second and third time for AVX2+FMA (x86-64-v3) and AVX-512
// (x86-64-v4), and the widest the CPU supports is picked when the library loads (GCC
// function multi-versioning). Mark a non-template function with INDEED_SIMD_CLONES and
// inline the loop into it.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define INDEED_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define INDEED_SIMD_CLONES
#endif
