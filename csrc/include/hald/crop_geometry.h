// Per-sample crop geometry shared by the CPU and CUDA crop_and_lookup kernels:
//  * the box convention of hald_ext/boxes.py: fractions (y, x, h, w) -> integer pixels with
//    round-half-to-even (torch.round), clipped to the image;
//  * torchvision's RandomResizedCrop rule (ten attempts, then the centre fallback), drawn from a
//    Philox stream keyed by the seed, so fresh crops are reproducible and backend-independent.
#pragma once

#include <cmath>
#include <cstdint>

#include "hald/philox.h"

namespace hald {

// Integer crop inside an image (all in pixels), plus the flip decision.
struct PixelBox {
  int32_t top, left, h, w;
};

HALD_HD double round_half_even(double v) {
#if defined(__CUDA_ARCH__)
  return ::rint(v);
#else
  return std::nearbyint(v);  // default rounding mode: to nearest, ties to even (as torch.round)
#endif
}

// boxes.py::boxes_to_pixels for one box.
// Non-finite inputs (possible only when value checks are skipped) give a 1x1 box, never a bad read.
HALD_HD PixelBox fraction_box_to_pixels(double y, double x, double h, double w, int32_t H, int32_t W) {
  if (!(y >= 0 && y <= 1)) y = 0;
  if (!(x >= 0 && x <= 1)) x = 0;
  if (!(h >= 0 && h <= 1)) h = 0;
  if (!(w >= 0 && w <= 1)) w = 0;
  double top = round_half_even(y * H), left = round_half_even(x * W);
  top = top < 0 ? 0 : (top > H - 1 ? H - 1 : top);
  left = left < 0 ? 0 : (left > W - 1 ? W - 1 : left);
  double ph = round_half_even(h * H), pw = round_half_even(w * W);
  ph = ph < 1 ? 1 : ph;
  pw = pw < 1 ? 1 : pw;
  ph = ph > H - top ? H - top : ph;
  pw = pw > W - left ? W - left : pw;
  return PixelBox{int32_t(top), int32_t(left), int32_t(ph), int32_t(pw)};
}

// RandomResizedCrop parameters, with log(ratio) precomputed on the host.
struct RrcParams {
  double scale_lo, scale_hi;
  double log_ratio_lo, log_ratio_hi;
  double ratio_lo, ratio_hi;  // min / max of the ratio range, for the fallback
  uint32_t key0, key1;        // seed
  uint64_t offset;            // step counter: a new offset gives new crops for the same seed
  double flip_prob;           // probability of a horizontal flip for fresh flips
};

// Stream layout: counter = (draw, sample, offset lo, offset hi). Draws 0..9 are the ten attempts
// (scale, log-ratio, top, left from the four words); draw 10 is the flip.
HALD_HD U32x4 rrc_draw(const RrcParams& p, uint32_t draw, int64_t sample) {
  U32x4 c;
  c.v[0] = draw;
  c.v[1] = uint32_t(sample);
  c.v[2] = uint32_t(p.offset);
  c.v[3] = uint32_t(p.offset >> 32) ^ (uint32_t(uint64_t(sample) >> 32) << 16);
  return philox4x32(c, p.key0, p.key1);
}

// torchvision.transforms.v2.RandomResizedCrop.make_params / boxes.sample_rrc_pixels, one sample.
// The area and aspect are computed in double; sqrt is correctly rounded everywhere, exp may differ
// by an ulp between libm and CUDA, which changes the rounded pixel size only on an exact tie.
HALD_HD PixelBox sample_rrc(const RrcParams& p, int64_t sample, int32_t H, int32_t W) {
  const double area = double(H) * double(W);
  for (uint32_t attempt = 0; attempt < 10; ++attempt) {
    const U32x4 r = rrc_draw(p, attempt, sample);
    const double target_area = area * (p.scale_lo + (p.scale_hi - p.scale_lo) * u01(r.v[0]));
    const double aspect = ::exp(p.log_ratio_lo + (p.log_ratio_hi - p.log_ratio_lo) * u01(r.v[1]));
    const double w = round_half_even(::sqrt(target_area * aspect));
    const double h = round_half_even(::sqrt(target_area / aspect));
    if (w > 0 && w <= W && h > 0 && h <= H) {
      const int32_t ih = int32_t(h), iw = int32_t(w);
      return PixelBox{int32_t(below(r.v[2], H - ih + 1)), int32_t(below(r.v[3], W - iw + 1)), ih, iw};
    }
  }
  const double in_ratio = double(W) / double(H);
  int32_t w, h;
  if (in_ratio < p.ratio_lo) {
    w = W;
    h = int32_t(round_half_even(W / p.ratio_lo));
  } else if (in_ratio > p.ratio_hi) {
    h = H;
    w = int32_t(round_half_even(H * p.ratio_hi));
  } else {
    w = W;
    h = H;
  }
  h = h < 1 ? 1 : (h > H ? H : h);
  w = w < 1 ? 1 : (w > W ? W : w);
  return PixelBox{(H - h) / 2, (W - w) / 2, h, w};
}

HALD_HD bool sample_flip(const RrcParams& p, int64_t sample) {
  return p.flip_prob > 0 && u01(rrc_draw(p, 10, sample).v[0]) < p.flip_prob;
}

}  // namespace hald
