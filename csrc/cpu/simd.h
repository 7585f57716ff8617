// Runtime choice of the vector ISA for the CPU kernels' hot float32 loops. The extension is built for
// baseline x86-64 (SSE2); a function marked FASTMIM_CPU_CLONES is compiled again for AVX2+FMA and AVX-512 and
// the dynamic loader picks the best clone for the machine (GCC/Clang target_clones, an ELF ifunc). Loops
// inlined into it with FASTMIM_ALWAYS_INLINE are vectorized for each target. Elsewhere it is a plain function.
#pragma once

#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
#define FASTMIM_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTMIM_CPU_CLONES
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FASTMIM_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FASTMIM_ALWAYS_INLINE inline
#endif
