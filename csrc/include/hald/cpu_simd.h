// CPU vectorisation helpers shared by the CPU kernels (host only).
#pragma once

#include <cstdint>
#include <cstring>

// Hot float loops are compiled for AVX-512, AVX2 and baseline x86-64; the loader picks one (ifunc).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(HALD_NO_CLONES)
#define HALD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HALD_CLONES
#endif

namespace hald {

// exp(x) for x <= 0 (arguments are z - max): Cephes-style range reduction + degree-6 polynomial,
// relative error ~2 ulp; no calls and no branches, so loops over it vectorise.
inline float exp_nonpos(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

}  // namespace hald
