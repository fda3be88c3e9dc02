// CPU kernel of the fused crop op.
//
// 1. per sample (serial, cheap): the pixel box (replayed or drawn with the shared RNG) and the flip;
// 2. per sample (parallel): the resampling taps of both axes, padded to a per-sample tap count K with
//    zero weights so the inner loops have a fixed trip count;
// 3. per output row (parallel over all B * S rows): vertical pass over the crop's width (contiguous
//    uint8 -> float, vectorised), horizontal pass from that row buffer, then flip + normalise + store.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../crop_and_lookup.h"
#include "hald/cpu_simd.h"


namespace hald {
namespace {

struct AxisTable {
  int32_t K = 0;                // taps per output index (padded)
  std::vector<int32_t> start;   // [S] first source index within the crop
  std::vector<float> w;         // [S, K]
};

void build_axis(AxisTable& t, int64_t in, int64_t S, bool aa) {
  const crop::Axis ax = crop::make_axis(in, S, aa);
  t.K = std::min<int32_t>(crop::max_taps(ax), int32_t(in));
  t.K = std::max<int32_t>(t.K, 1);
  t.start.assign(S, 0);
  t.w.assign(S * t.K, 0.0f);
  for (int64_t i = 0; i < S; ++i) {
    const crop::Taps tp = crop::make_taps(ax, i);
    // Keep start + K inside [0, in): shift left and put the weights at their offsets.
    int32_t st = std::min<int32_t>(tp.start, int32_t(in) - t.K);
    st = std::max<int32_t>(st, 0);
    t.start[i] = st;
    for (int32_t k = 0; k < tp.n; ++k) {
      const int32_t off = tp.start + k - st;
      if (off >= 0 && off < t.K) t.w[i * t.K + off] += crop::tap_weight(ax, tp, k);
    }
  }
}

// acc[j] = sum_k wy[k] * src[k * stride + j] for j < n (uint8 rows -> float).
HALD_CLONES void vertical(const uint8_t* src, int64_t stride, const float* wy, int32_t K, float* acc, int64_t n) {
  {
    const float w0 = wy[0];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) acc[j] = w0 * float(src[j]);
  }
  for (int32_t k = 1; k < K; ++k) {
    const float wk = wy[k];
    if (wk == 0.0f) continue;
    const uint8_t* s = src + k * stride;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) acc[j] += wk * float(s[j]);
  }
}

// out[o * 3 + c] = sum_k wx[o, k] * row[(start[o] + k) * 3 + c]
HALD_CLONES void horizontal(const float* row, const int32_t* start, const float* wx, int32_t K, float* out, int64_t S) {
  for (int64_t o = 0; o < S; ++o) {
    const float* r = row + int64_t(start[o]) * 3;
    const float* w = wx + o * K;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f;
    for (int32_t k = 0; k < K; ++k) {
      a0 += w[k] * r[3 * k];
      a1 += w[k] * r[3 * k + 1];
      a2 += w[k] * r[3 * k + 2];
    }
    out[3 * o] = a0;
    out[3 * o + 1] = a1;
    out[3 * o + 2] = a2;
  }
}

template <typename T>
inline T cast_out(float v) {
  return static_cast<T>(v);
}

// Flip + normalise + store one output row (interleaved acc [S, 3]) in NCHW or NHWC.
template <typename T>
void store_row(const float* acc, int64_t S, bool flip, const float* mul, const float* add, T* out, bool nhwc,
               int64_t plane) {
  if (nhwc) {
    for (int64_t o = 0; o < S; ++o) {
      const int64_t so = flip ? S - 1 - o : o;
      for (int c = 0; c < 3; ++c) out[o * 3 + c] = cast_out<T>(acc[so * 3 + c] * mul[c] + add[c]);
    }
  } else {
    for (int c = 0; c < 3; ++c) {
      T* dst = out + c * plane;
      const float m = mul[c], ad = add[c];
      if (flip) {
        for (int64_t o = 0; o < S; ++o) dst[o] = cast_out<T>(acc[(S - 1 - o) * 3 + c] * m + ad);
      } else {
        for (int64_t o = 0; o < S; ++o) dst[o] = cast_out<T>(acc[o * 3 + c] * m + ad);
      }
    }
  }
}

template <typename T>
void resample(const CropArgs& a, const int32_t* pix, const uint8_t* flips, T* out) {
  const int64_t B = a.B, S = a.S, W = a.W;
  std::vector<AxisTable> tx(B), ty(B);
  // Serial: O(B * S * K), small next to the resampling, and one parallel region fewer (each costs a
  // scheduler time slice when the cores are shared).
  for (int64_t b = 0; b < B; ++b) {
    build_axis(ty[b], pix[b * 4 + 2], S, a.antialias);
    build_axis(tx[b], pix[b * 4 + 3], S, a.antialias);
  }
  const uint8_t* img = a.images.data_ptr<uint8_t>();
  const int64_t* ids = a.ids.data_ptr<int64_t>();
  const int64_t plane = S * S;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(S * 3, 1));
  at::parallel_for(0, B * S, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> vbuf(W * 3), hbuf(S * 3);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / S, oy = r % S;
      const int32_t top = pix[b * 4], left = pix[b * 4 + 1], cw = pix[b * 4 + 3];
      const AxisTable& Y = ty[b];
      const AxisTable& X = tx[b];
      const uint8_t* src = img + ((ids[b] * a.H + top + Y.start[oy]) * W + left) * 3;
      vertical(src, W * 3, Y.w.data() + oy * Y.K, Y.K, vbuf.data(), int64_t(cw) * 3);
      horizontal(vbuf.data(), X.start.data(), X.w.data(), X.K, hbuf.data(), S);
      T* dst = a.channels_last ? out + (b * plane + oy * S) * 3 : out + b * 3 * plane + oy * S;
      store_row<T>(hbuf.data(), S, flips[b] != 0, a.mul, a.add, dst, a.channels_last, plane);
    }
  });
}

}  // namespace

void crop_cpu_kernel(const CropArgs& a, at::Tensor& pix_t, at::Tensor& flips_t, at::Tensor& out) {
  int32_t* pix = pix_t.data_ptr<int32_t>();
  uint8_t* fl = flips_t.data_ptr<uint8_t>();
  if (a.boxes.defined()) {
    const float* bx = a.boxes.data_ptr<float>();
    const uint8_t* f = a.flips.data_ptr<uint8_t>();
    for (int64_t b = 0; b < a.B; ++b) {
      const crop::PixBox p = crop::box_to_pixels(bx[4 * b], bx[4 * b + 1], bx[4 * b + 2], bx[4 * b + 3], a.H, a.W);
      pix[4 * b] = p.top, pix[4 * b + 1] = p.left, pix[4 * b + 2] = p.h, pix[4 * b + 3] = p.w;
      fl[b] = f[b] ? 1 : 0;
    }
  } else {
    for (int64_t b = 0; b < a.B; ++b) {
      crop::Rng rng = crop::make_rng(a.seed, a.step, b, crop::kPurposeBox);
      const crop::PixBox p = crop::sample_rrc(rng, a.H, a.W, a.rrc);
      pix[4 * b] = p.top, pix[4 * b + 1] = p.left, pix[4 * b + 2] = p.h, pix[4 * b + 3] = p.w;
      fl[b] = crop::sample_flip(a.seed, a.step, b, a.rrc.flip_prob) ? 1 : 0;
    }
  }
  // out is [B, 3, S, S] contiguous, or its channels_last view of a [B, S, S, 3] buffer.
  switch (out.scalar_type()) {
    case at::kFloat: resample<float>(a, pix, fl, out.data_ptr<float>()); break;
    case at::kBFloat16: resample<c10::BFloat16>(a, pix, fl, out.data_ptr<c10::BFloat16>()); break;
    case at::kHalf: resample<c10::Half>(a, pix, fl, out.data_ptr<c10::Half>()); break;
    default: TORCH_CHECK(false, "crop_and_lookup: unsupported out dtype ", out.scalar_type());
  }
}

HALD_REGISTER_CROP(CPU, crop_cpu_kernel)

}  // namespace hald
