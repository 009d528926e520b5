// Function multi-versioning for the CPU kernels. Hot entry points are compiled twice
// (x86-64-v3 = AVX2+FMA, and the baseline x86-64) and the loader picks by CPU features; "arch=
// haswell" is not used because its resolver checks the CPU model and rejects e.g. AMD Zen.
// -DVSSM_NO_TARGET_CLONES builds the baseline only (e.g. to compare against the clones).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(VSSM_NO_TARGET_CLONES)
#define VSSM_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define VSSM_CLONES
#endif

// Helpers called from a clone must be inlined into it to get its ISA.
#define VSSM_INLINE inline __attribute__((always_inline))

// Vectors passed between those always-inline helpers make GCC note that the vector ABI differs
// without AVX (-Wpsabi); nothing vector-typed crosses a real call.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
