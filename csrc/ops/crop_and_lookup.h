// Shared host-side pieces of the crop_and_lookup op: validated arguments and the backend entry points.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "hald/crop_math.h"

namespace hald {

struct CropArgs {
  at::Tensor images;     // uint8 [N, H, W, 3] contiguous
  at::Tensor ids;        // int64 [B] contiguous, validated
  at::Tensor boxes;      // replay: float32 [B, 4] fractions contiguous; fresh: undefined
  at::Tensor flips;      // replay: uint8 [B] contiguous; fresh: undefined
  int64_t N = 0, H = 0, W = 0, B = 0, S = 0;
  int64_t seed = 0, step = 0;
  crop::RrcParams rrc{};
  float mul[3] = {0, 0, 0};  // out = v * mul[c] + add[c]  ==  (v / 255 - mean) / std
  float add[3] = {0, 0, 0};
  bool antialias = true;
  bool channels_last = false;
};

// Backend kernels: fill pix (int32 [B, 4] top, left, h, w), flips_used (uint8 [B]) and out
// ([B, 3, S, S] in out's dtype and memory format).
void crop_cpu_kernel(const CropArgs& a, at::Tensor& pix, at::Tensor& flips_used, at::Tensor& out);
void crop_cuda_kernel(const CropArgs& a, at::Tensor& pix, at::Tensor& flips_used, at::Tensor& out);

using CropKernel = void (*)(const CropArgs&, at::Tensor&, at::Tensor&, at::Tensor&);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> crop_and_lookup_impl(
    CropKernel kernel, const at::Tensor& images, const at::Tensor& image_ids, int64_t out_size,
    const std::optional<at::Tensor>& boxes, const std::optional<at::Tensor>& flips, std::optional<int64_t> seed,
    int64_t step, at::ArrayRef<double> scale, at::ArrayRef<double> ratio, double flip_prob,
    at::ArrayRef<double> mean, at::ArrayRef<double> std, at::ScalarType out_dtype, bool channels_last,
    bool antialias, const std::optional<at::Tensor>& label_ids, const std::optional<at::Tensor>& label_codes,
    const std::optional<at::Tensor>& slots);

#define HALD_REGISTER_CROP(KEY, KERNEL)                                                                            \
  namespace {                                                                                                     \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> crop_##KEY(                              \
      const at::Tensor& images, const at::Tensor& image_ids, int64_t out_size,                                   \
      const std::optional<at::Tensor>& boxes, const std::optional<at::Tensor>& flips,                            \
      std::optional<int64_t> seed, int64_t step, at::ArrayRef<double> scale, at::ArrayRef<double> ratio,         \
      double flip_prob, at::ArrayRef<double> mean, at::ArrayRef<double> std, at::ScalarType out_dtype,           \
      bool channels_last, bool antialias, const std::optional<at::Tensor>& label_ids,                            \
      const std::optional<at::Tensor>& label_codes, const std::optional<at::Tensor>& slots) {                    \
    return crop_and_lookup_impl(KERNEL, images, image_ids, out_size, boxes, flips, seed, step, scale, ratio,     \
                                flip_prob, mean, std, out_dtype, channels_last, antialias, label_ids,            \
                                label_codes, slots);                                                             \
  }                                                                                                               \
  }                                                                                                               \
  TORCH_LIBRARY_IMPL(hald, KEY, m) { m.impl("crop_and_lookup", &crop_##KEY); }

}  // namespace hald
