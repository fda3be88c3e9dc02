// Separable resampling weights of one output coordinate, as PyTorch computes them for
// F.interpolate(mode="bilinear", align_corners=False) with and without antialias (the same rule as
// PIL and torchvision's resized_crop). Shared by the CPU kernel (which tabulates them once per
// sample) and the CUDA kernel (once per band of output rows and once per output column: below).
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

// ------------------------------------------------------------------------------------------------
// The CUDA crop kernel's per-thread work (crop_and_lookup_kernel.cu), written once for host and device
// so that the CPU suite runs it too (the `_crop_and_lookup_band` op renders with it on the CPU).
//
// A block renders kBand output rows x up to 256 output columns of one sample. The band's vertical
// spans (first source row, taps, weights) are built once into shared memory (BandSpans); each thread
// builds its column's horizontal span once, then walks the band with a sliding window of W
// horizontally filtered source rows (W x 3 floats in registers): each output row slides the window down
// to its first tap row, computing the horizontal pass of each new source row once, then takes the
// vertical weighted sum. No per-pixel span arithmetic, no per-pixel 64-bit division.

constexpr int kBand = 16;    // output rows per block
constexpr int kWinMax = 16;  // widest window; crops with more taps take the direct path (W = 0)

// The smallest window holding every tap of every crop no larger than h_max x w_max (0: direct path).
HALD_HD int32_t band_window(int32_t h_max, int32_t w_max, int32_t S, bool antialias) {
  const int32_t th = max_taps(h_max, S, antialias), tw = max_taps(w_max, S, antialias);
  const int32_t taps = th > tw ? th : tw;
  return taps <= 2 ? 2 : taps <= 4 ? 4 : taps <= 8 ? 8 : taps <= kWinMax ? kWinMax : 0;
}

struct BandSpans {
  int32_t start[kBand];          // first source row of each band row (crop-relative)
  int32_t count[kBand];          // its taps (0 past the last output row)
  float w[kBand][kWinMax];       // its first kWinMax weights (float, from the double-precision span)
  AxisSpan<double> span[kBand];  // the span itself, for the direct path
};

// Row t of the band starting at output row y0 (one thread per t; t outside [0, kBand) does nothing).
HALD_HD void build_band_row(BandSpans& sp, int32_t crop_h, int32_t S, int32_t y0, bool antialias, int t) {
  if (t < 0 || t >= kBand) return;
  const int32_t y = y0 + t;
  if (y >= S) {
    sp.start[t] = 0;
    sp.count[t] = 0;
    return;
  }
  const AxisSpan<double> s = make_span<double>(crop_h, S, y, antialias);
  sp.start[t] = s.start;
  sp.count[t] = s.count;
  sp.span[t] = s;
  for (int j = 0; j < kWinMax; ++j) sp.w[t][j] = j < s.count ? float(s.weight(j)) : 0.f;
}

// One crop as the renderer reads it: its top-left source pixel, the row stride, its size, the flip.
struct CropSource {
  const uint8_t* origin;
  int64_t stride;  // bytes per source row
  int32_t h, w;
  bool flip;
};

// Output column x of the band rows [y0, y0 + kBand) of crop c: store(y, r, g, b) (0..255 floats) for
// each row y < S where mine(y). load(p) reads one source byte. W: window (>= every tap count of the
// crop on both axes), or 0 for the direct path (every tap of every pixel summed, for huge downscales).
template <int W, typename Load, typename Mine, typename Store>
HALD_HD void render_band_column(const CropSource& c, const BandSpans& sp, int32_t S, bool antialias, int32_t y0,
                                int32_t x, Load load, Mine mine, Store store) {
  const AxisSpan<double> sx = make_span<double>(c.w, S, c.flip ? S - 1 - x : x, antialias);
  const uint8_t* origin = c.origin + int64_t(sx.start) * 3;
  if constexpr (W == 0) {
    for (int t = 0; t < kBand; ++t) {
      const int32_t y = y0 + t;
      if (y >= S) break;
      if (!mine(y)) continue;
      const AxisSpan<double>& sy = sp.span[t];
      float a0 = 0.f, a1 = 0.f, a2 = 0.f;
      for (int32_t j = 0; j < sy.count; ++j) {
        const uint8_t* px = origin + int64_t(sy.start + j) * c.stride;
        float r0 = 0.f, r1 = 0.f, r2 = 0.f;
        for (int32_t i = 0; i < sx.count; ++i) {
          const float wx = float(sx.weight(i));
          r0 += wx * load(px + 3 * i);
          r1 += wx * load(px + 3 * i + 1);
          r2 += wx * load(px + 3 * i + 2);
        }
        const float wy = float(sy.weight(j));
        a0 += wy * r0;
        a1 += wy * r1;
        a2 += wy * r2;
      }
      store(y, a0, a1, a2);
    }
  } else {
    float wx[W];
#if defined(__CUDACC__)
#pragma unroll
#endif
    for (int i = 0; i < W; ++i) wx[i] = i < sx.count ? float(sx.weight(i)) : 0.f;
    // Horizontal pass of crop row r (zero past the crop: such rows are never weighted, never read).
    const auto hpass = [&](int32_t r, float* h) {
      h[0] = h[1] = h[2] = 0.f;
      if (r >= c.h) return;
      const uint8_t* px = origin + int64_t(r) * c.stride;
#if defined(__CUDACC__)
#pragma unroll
#endif
      for (int i = 0; i < W; ++i) {
        if (i < sx.count) {
          h[0] += wx[i] * load(px + 3 * i);
          h[1] += wx[i] * load(px + 3 * i + 1);
          h[2] += wx[i] * load(px + 3 * i + 2);
        }
      }
    };
    float win[W][3];
    int32_t base = -2 * W;  // crop row held in win[0] (none yet)
    for (int t = 0; t < kBand; ++t) {
      const int32_t y = y0 + t;
      if (y >= S) break;
      const int32_t ys = sp.start[t];  // non-decreasing in t
      if (ys >= base + W) {            // no overlap with the window: refill it
        base = ys;
#if defined(__CUDACC__)
#pragma unroll
#endif
        for (int s = 0; s < W; ++s) hpass(base + s, win[s]);
      } else {
        while (base < ys) {  // slide down one source row at a time
#if defined(__CUDACC__)
#pragma unroll
#endif
          for (int s = 0; s + 1 < W; ++s) {
            win[s][0] = win[s + 1][0];
            win[s][1] = win[s + 1][1];
            win[s][2] = win[s + 1][2];
          }
          ++base;
          hpass(base + W - 1, win[W - 1]);
        }
      }
      if (!mine(y)) continue;
      float a0 = 0.f, a1 = 0.f, a2 = 0.f;
#if defined(__CUDACC__)
#pragma unroll
#endif
      for (int s = 0; s < W; ++s) {
        const float w = sp.w[t][s];
        a0 += w * win[s][0];
        a1 += w * win[s][1];
        a2 += w * win[s][2];
      }
      store(y, a0, a1, a2);
    }
  }
}

}  // namespace hald
