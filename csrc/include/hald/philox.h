// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a
// counter-based generator. Output is a pure function of (key, counter), so every sample of a batch
// draws its own stream without shared state, and the CPU and CUDA kernels produce the same bits.
#pragma once

#include <cstdint>

#include "hald/soft_hard_math.h"  // HALD_HD

namespace hald {

struct U32x4 {
  uint32_t v[4];
};

HALD_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(p >> 32);
  return uint32_t(p);
}

// Ten rounds of Philox-4x32 on `ctr` under the 64-bit key (k0, k1).
HALD_HD U32x4 philox4x32(U32x4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kM0, ctr.v[0], &hi0);
    const uint32_t lo1 = mulhilo32(kM1, ctr.v[2], &hi1);
    U32x4 n;
    n.v[0] = hi1 ^ ctr.v[1] ^ k0;
    n.v[1] = lo1;
    n.v[2] = hi0 ^ ctr.v[3] ^ k1;
    n.v[3] = lo0;
    ctr = n;
    k0 += kW0;
    k1 += kW1;
  }
  return ctr;
}

// Uniform double in [0, 1) from 32 random bits (exact: no rounding, identical on every backend).
HALD_HD double u01(uint32_t x) { return double(x) * (1.0 / 4294967296.0); }

// Integer uniform in [0, n) by the multiply-shift rule (bias below 2^-32 * n, irrelevant here).
HALD_HD int64_t below(uint32_t x, int64_t n) { return int64_t((uint64_t(x) * uint64_t(n)) >> 32); }

}  // namespace hald
