// Separable resampling weights of one output coordinate, as PyTorch computes them for
// F.interpolate(mode="bilinear", align_corners=False) with and without antialias (the same rule as
// PIL and torchvision's resized_crop). Shared by the CPU kernel (which tabulates them once per
// sample) and the CUDA kernel (which evaluates them on the fly).
//
// Output index i of an n_out-wide axis reading an n_in-wide source span:
//   scale = n_in / n_out, centre = scale * (i + 0.5)
//   antialias and scale > 1: triangle filter stretched to support `scale`: taps j in
//                            [int(centre - scale + 0.5), int(centre + scale + 0.5)) clipped to the span,
//                            weight (1 - |j + 0.5 - centre| / scale)+, normalised to sum to one
//   otherwise              : the two bilinear taps around max(centre - 0.5, 0), the second clamped
// (With antialias and scale <= 1 PyTorch's filter reduces to exactly these two bilinear taps.)
#pragma once

#include <cmath>
#include <cstdint>

#include "hald/soft_hard_math.h"  // HALD_HD

namespace hald {

// Most taps one output coordinate may need.
HALD_HD int32_t max_taps(int32_t n_in, int32_t n_out, bool antialias) {
  const double scale = double(n_in) / double(n_out);
  if (!antialias || scale <= 1.0) return 2;
  return int32_t(::ceil(2.0 * scale)) + 1;
}

template <typename T>
struct AxisSpan {
  int32_t start;  // first source tap, relative to the span's origin
  int32_t count;  // taps
  bool filtered;  // antialias triangle filter (else bilinear)
  T centre_off;   // filtered: start + 0.5 - centre; bilinear: unused
  T inv_scale;    // filtered: 1 / scale
  T norm;         // filtered: 1 / sum of raw weights; bilinear: lambda of the second tap
  HALD_HD T weight(int32_t j) const {
    if (filtered) {
      const T d = ::fabs((T(j) + centre_off) * inv_scale);
      return (d < T(1) ? T(1) - d : T(0)) * norm;
    }
    return j == 0 ? T(1) - norm : norm;
  }
};

// The span's geometry (scale, centre, source coordinate, first tap) is computed in double on every
// backend, as the CPU always did: these are absolute source coordinates, where float's rounding
// (2.4e-4 px at a 4000 px source, more under an approximate division) moves the bilinear lambda by
// 0.1-0.2 grey levels at S = 224. Only the per-tap quantities, relative to the span's start and
// bounded by the filter support, are stored as T.
template <typename T>
HALD_HD AxisSpan<T> make_span(int32_t n_in, int32_t n_out, int32_t i, bool antialias) {
  AxisSpan<T> s;
  const double scale = double(n_in) / double(n_out);  // IEEE division: correctly rounded on host and device
  if (antialias && scale > 1.0) {
    const double centre = scale * (double(i) + 0.5);
    int32_t lo = int32_t(centre - scale + 0.5);
    lo = lo < 0 ? 0 : lo;
    int32_t hi = int32_t(centre + scale + 0.5);
    hi = hi > n_in ? n_in : hi;
    s.start = lo;
    s.count = hi - lo;
    s.filtered = true;
    s.centre_off = T(double(lo) + 0.5 - centre);
    s.inv_scale = T(1.0 / scale);
    s.norm = T(1);
    T total = 0;
    for (int32_t j = 0; j < s.count; ++j) total += s.weight(j);
    s.norm = total > T(0) ? T(1) / total : T(0);
    return s;
  }
  double src = scale * (double(i) + 0.5) - 0.5;
  src = src < 0.0 ? 0.0 : src;
  int32_t i0 = int32_t(src);
  i0 = i0 > n_in - 1 ? n_in - 1 : i0;
  s.start = i0;
  s.filtered = false;
  s.centre_off = 0;
  s.inv_scale = 0;
  if (i0 + 1 < n_in) {
    s.count = 2;
    s.norm = T(src - double(i0));
  } else {
    s.count = 1;
    s.norm = 0;
  }
  return s;
}

}  // namespace hald
