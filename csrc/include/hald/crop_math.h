// Host-device math of the fused crop op (crop_and_lookup), shared by the CPU and CUDA kernels:
//   - a counter-based RNG (splitmix64 finaliser keyed by (seed, step, sample)), so both backends draw
//     the same fresh crops for the same seed;
//   - torchvision's RandomResizedCrop rule (ten attempts, then the centre fallback);
//   - the box convention of hald_ext/boxes.py (fractions -> integer pixels);
//   - per-output-index resampling taps: PyTorch's upsample_bilinear2d_aa (antialias=True: triangle
//     filter of support max(scale, 1), normalised weights, align_corners=False centres) and plain
//     bilinear (antialias=False, align_corners=False, source index clamped at 0).
#pragma once

#include <cmath>
#include <cstdint>

#include "hald/soft_hard_math.h"  // HALD_HD

namespace hald {
namespace crop {

HALD_HD uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Stream of uniforms for one (seed, step, sample, purpose): the n-th draw is a pure function of the
// key and n, so any thread on any backend reproduces it.
struct Rng {
  uint64_t key;
  uint64_t ctr;
  HALD_HD double uniform() {  // [0, 1), 53 random bits
    const uint64_t r = mix64(key ^ mix64(ctr++));
    return double(r >> 11) * 1.1102230246251565404e-16;
  }
};

enum Purpose : uint64_t { kPurposeBox = 0x1, kPurposeFlip = 0x2 };

HALD_HD Rng make_rng(int64_t seed, int64_t step, int64_t sample, uint64_t purpose) {
  uint64_t k = mix64(uint64_t(seed) ^ 0x68616c64ull);  // "hald"
  k = mix64(k ^ uint64_t(step));
  k = mix64(k ^ uint64_t(sample));
  k = mix64(k ^ purpose);
  return Rng{k, 0};
}

struct PixBox {
  int32_t top, left, h, w;
};

struct RrcParams {
  double scale_lo, scale_hi;
  double log_ratio_lo, log_ratio_hi;
  double ratio_min, ratio_max;
  double flip_prob;
};

// Round half to even, as Python's round() and torch.round().
HALD_HD double round_even(double v) {
#if defined(__CUDA_ARCH__)
  return rint(v);
#else
  return std::nearbyint(v);
#endif
}

// torchvision.transforms.RandomResizedCrop.get_params with this module's RNG.
HALD_HD PixBox sample_rrc(Rng& rng, int64_t H, int64_t W, const RrcParams& p) {
  const double area = double(H) * double(W);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * (p.scale_lo + (p.scale_hi - p.scale_lo) * rng.uniform());
    const double aspect = exp(p.log_ratio_lo + (p.log_ratio_hi - p.log_ratio_lo) * rng.uniform());
    const int64_t w = int64_t(round_even(sqrt(target * aspect)));
    const int64_t h = int64_t(round_even(sqrt(target / aspect)));
    if (0 < w && w <= W && 0 < h && h <= H) {
      int64_t i = int64_t(floor(rng.uniform() * double(H - h + 1)));
      int64_t j = int64_t(floor(rng.uniform() * double(W - w + 1)));
      i = i > H - h ? H - h : i;
      j = j > W - w ? W - w : j;
      return PixBox{int32_t(i), int32_t(j), int32_t(h), int32_t(w)};
    }
  }
  const double in_ratio = double(W) / double(H);
  int64_t w, h;
  if (in_ratio < p.ratio_min) {
    w = W;
    h = int64_t(round_even(double(w) / p.ratio_min));
  } else if (in_ratio > p.ratio_max) {
    h = H;
    w = int64_t(round_even(double(h) * p.ratio_max));
  } else {
    w = W;
    h = H;
  }
  return PixBox{int32_t((H - h) / 2), int32_t((W - w) / 2), int32_t(h), int32_t(w)};
}

HALD_HD bool sample_flip(int64_t seed, int64_t step, int64_t sample, double prob) {
  Rng r = make_rng(seed, step, sample, kPurposeFlip);
  return r.uniform() < prob;
}

// hald_ext.boxes.boxes_to_pixels for one (y, x, h, w) box of fractions (given as float32, as stored).
HALD_HD PixBox box_to_pixels(float y, float x, float h, float w, int64_t H, int64_t W) {
  double top = round_even(double(y) * double(H)), left = round_even(double(x) * double(W));
  top = top < 0 ? 0 : (top > double(H - 1) ? double(H - 1) : top);
  left = left < 0 ? 0 : (left > double(W - 1) ? double(W - 1) : left);
  double hh = round_even(double(h) * double(H)), ww = round_even(double(w) * double(W));
  hh = hh < 1 ? 1 : hh;
  ww = ww < 1 ? 1 : ww;
  hh = hh > double(H) - top ? double(H) - top : hh;
  ww = ww > double(W) - left ? double(W) - left : ww;
  return PixBox{int32_t(top), int32_t(left), int32_t(hh), int32_t(ww)};
}

// Resampling along one axis: `in` source pixels (the crop's extent) -> `out` output pixels.
struct Axis {
  float scale;     // in / out
  float support;   // filter half-width in source pixels (antialias)
  float invscale;  // filter argument scale (antialias)
  int32_t in;
  bool aa;
};

HALD_HD Axis make_axis(int64_t in, int64_t out, bool aa) {
  Axis a;
  a.scale = float(in) / float(out);
  a.support = (aa && a.scale >= 1.0f) ? a.scale : 1.0f;
  a.invscale = (aa && a.scale >= 1.0f) ? 1.0f / a.scale : 1.0f;
  a.in = int32_t(in);
  a.aa = aa;
  return a;
}

// Upper bound on taps per output index for this axis.
HALD_HD int32_t max_taps(const Axis& a) { return a.aa ? int32_t(ceil(a.support)) * 2 + 1 : 2; }

// The taps of output index i: source indices [start, start + n) within the crop, weight of tap t
// via tap_weight(). For antialias the weights are normalised by `norm` (1 / their sum).
struct Taps {
  int32_t start, n;
  float center;  // aa: filter centre; bilinear: lambda
  float norm;
};

HALD_HD float aa_filter(float x) {
  x = x < 0 ? -x : x;
  return x < 1.0f ? 1.0f - x : 0.0f;
}

HALD_HD float tap_weight(const Axis& a, const Taps& tp, int32_t t) {
  if (a.aa) return aa_filter((float(t + tp.start) - tp.center + 0.5f) * a.invscale) * tp.norm;
  if (tp.n == 1) return 1.0f;
  return t == 0 ? 1.0f - tp.center : tp.center;
}

HALD_HD Taps make_taps(const Axis& a, int64_t i) {
  Taps tp;
  if (a.aa) {
    const float center = a.scale * (float(i) + 0.5f);
    int64_t lo = int64_t(center - a.support + 0.5f);  // truncation, as PyTorch
    lo = lo < 0 ? 0 : lo;
    int64_t hi = int64_t(center + a.support + 0.5f);
    hi = hi > a.in ? a.in : hi;
    tp.start = int32_t(lo);
    tp.n = int32_t(hi - lo);
    tp.center = center;
    tp.norm = 1.0f;
    float total = 0.0f;
    for (int32_t t = 0; t < tp.n; ++t) total += tap_weight(a, tp, t);
    tp.norm = total != 0.0f ? 1.0f / total : 0.0f;
  } else {
    float src = a.scale * (float(i) + 0.5f) - 0.5f;
    src = src < 0 ? 0.0f : src;
    int32_t i0 = int32_t(src);
    i0 = i0 > a.in - 1 ? a.in - 1 : i0;
    tp.start = i0;
    tp.n = i0 < a.in - 1 ? 2 : 1;
    tp.center = src - float(i0);
    tp.norm = 1.0f;
  }
  return tp;
}

}  // namespace crop
}  // namespace hald
