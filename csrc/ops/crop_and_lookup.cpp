// Schema and argument checks of the fused random-resized-crop + label lookup op, shared by every
// backend. Validation of ids, slots and boxes reads them on the host (one sync on CUDA).
#include "crop_and_lookup.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

namespace hald {

namespace {

void check_device(const at::Tensor& images, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == images.device(), "crop_and_lookup: ", name, " is on ", t.device(),
              " but images are on ", images.device());
}

bool is_integer(const at::Tensor& t) {
  return !t.is_floating_point() && !t.is_complex() && t.scalar_type() != at::kBool;
}

// Checks an integer index vector against [0, hi) and returns it as int64.
at::Tensor check_index(const at::Tensor& t, int64_t B, int64_t hi, const char* name, const char* what) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == B, "crop_and_lookup: ", name, " must have shape [", B, "], got ",
              t.sizes());
  TORCH_CHECK(is_integer(t), "crop_and_lookup: ", name, " must be an integer tensor, got ", t.scalar_type());
  at::Tensor v = t.to(at::kLong).contiguous();
  if (B > 0) {
    const auto mm = at::aminmax(v);
    const int64_t lo = std::get<0>(mm).item<int64_t>(), hi_v = std::get<1>(mm).item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi_v < hi, "crop_and_lookup: ", name, " out of range: values in [", lo, ", ", hi_v,
                "] but there are ", hi, " ", what);
  }
  return v;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> crop_and_lookup_impl(
    CropKernel kernel, const at::Tensor& images, const at::Tensor& image_ids, int64_t out_size,
    const std::optional<at::Tensor>& boxes, const std::optional<at::Tensor>& flips, std::optional<int64_t> seed,
    int64_t step, at::ArrayRef<double> scale, at::ArrayRef<double> ratio, double flip_prob,
    at::ArrayRef<double> mean, at::ArrayRef<double> std, at::ScalarType out_dtype, bool channels_last,
    bool antialias, const std::optional<at::Tensor>& label_ids, const std::optional<at::Tensor>& label_codes,
    const std::optional<at::Tensor>& slots) {
  CropArgs a;
  TORCH_CHECK(images.dim() == 4 && images.size(3) == 3, "crop_and_lookup: images must be uint8 NHWC [N, H, W, 3], got shape ",
              images.sizes());
  TORCH_CHECK(images.scalar_type() == at::kByte, "crop_and_lookup: images must be uint8, got ", images.scalar_type());
  a.N = images.size(0);
  a.H = images.size(1);
  a.W = images.size(2);
  TORCH_CHECK(a.H > 0 && a.W > 0, "crop_and_lookup: images must have a positive height and width, got ", images.sizes());
  TORCH_CHECK(a.H < (1 << 30) && a.W < (1 << 30), "crop_and_lookup: images too large");
  TORCH_CHECK(out_size >= 1 && out_size <= 16384, "crop_and_lookup: out_size must be in [1, 16384], got ", out_size);
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf,
              "crop_and_lookup: out_dtype must be float32, bfloat16 or float16, got ", out_dtype);
  TORCH_CHECK(mean.size() == 3 && std.size() == 3, "crop_and_lookup: mean and std must have 3 values (RGB), got ",
              mean.size(), " and ", std.size());
  for (int c = 0; c < 3; ++c) {
    TORCH_CHECK(std::isfinite(mean[c]) && std::isfinite(std[c]) && std[c] != 0,
                "crop_and_lookup: mean must be finite and std finite and non-zero");
    a.mul[c] = float(1.0 / (255.0 * std[c]));
    a.add[c] = float(-mean[c] / std[c]);
  }
  a.S = out_size;
  a.antialias = antialias;
  a.channels_last = channels_last;
  a.images = images.contiguous();

  check_device(images, image_ids, "image_ids");
  TORCH_CHECK(image_ids.dim() == 1, "crop_and_lookup: image_ids must be 1-D [B], got shape ", image_ids.sizes());
  a.B = image_ids.size(0);
  a.ids = check_index(image_ids, a.B, a.N, "image_ids", "images");

  // Replay (boxes + flips) or fresh (seed).
  TORCH_CHECK(boxes.has_value() == flips.has_value(), "crop_and_lookup: boxes and flips must be given together");
  TORCH_CHECK(boxes.has_value() != seed.has_value(),
              "crop_and_lookup: give either stored boxes + flips (replay) or a seed (fresh crops), not ",
              boxes.has_value() ? "both" : "neither");
  if (boxes.has_value()) {
    const at::Tensor& bx = *boxes;
    const at::Tensor& fl = *flips;
    check_device(images, bx, "boxes");
    check_device(images, fl, "flips");
    TORCH_CHECK(bx.dim() == 2 && bx.size(0) == a.B && bx.size(1) == 4,
                "crop_and_lookup: boxes must have shape [", a.B, ", 4] (y, x, h, w), got ", bx.sizes());
    TORCH_CHECK(fl.dim() == 1 && fl.size(0) == a.B, "crop_and_lookup: flips must have shape [", a.B, "], got ",
                fl.sizes());
    TORCH_CHECK(fl.scalar_type() == at::kBool || fl.scalar_type() == at::kByte,
                "crop_and_lookup: flips must be bool or uint8, got ", fl.scalar_type());
    at::Tensor f;
    if (bx.scalar_type() == at::kUInt16 || bx.scalar_type() == at::kShort || bx.scalar_type() == at::kInt) {
      // Stored codes: value * 65535 (hald_ext.boxes.quantize_boxes); dequantised as dequantize_boxes does.
      at::Tensor c = bx.to(at::kInt);
      if (bx.scalar_type() == at::kShort) c = c.bitwise_and(0xffff);
      f = c.to(at::kFloat).div_(65535.0);
    } else {
      TORCH_CHECK(bx.scalar_type() == at::kFloat || bx.scalar_type() == at::kDouble,
                  "crop_and_lookup: boxes must be uint16 codes or float32/float64 fractions, got ", bx.scalar_type());
      f = bx.to(at::kFloat);
    }
    f = f.contiguous();
    if (a.B > 0) {
      const double tol = 2.0 / 65535.0;
      const bool finite = at::isfinite(f).all().item<bool>();
      TORCH_CHECK(finite, "crop_and_lookup: boxes must be finite");
      const auto mm = at::aminmax(f);
      const double lo = std::get<0>(mm).item<double>(), hi = std::get<1>(mm).item<double>();
      TORCH_CHECK(lo >= 0 && hi <= 1, "crop_and_lookup: boxes must be fractions in [0, 1] (y, x, h, w), got values in [",
                  lo, ", ", hi, "]");
      const double min_hw = at::amin(f.narrow(1, 2, 2)).item<double>();
      TORCH_CHECK(min_hw > 0, "crop_and_lookup: empty box (h or w == 0)");
      const double max_y = (f.select(1, 0) + f.select(1, 2)).max().item<double>();
      const double max_x = (f.select(1, 1) + f.select(1, 3)).max().item<double>();
      TORCH_CHECK(max_y <= 1 + tol && max_x <= 1 + tol, "crop_and_lookup: box outside the image (y + h = ", max_y,
                  ", x + w = ", max_x, ", must be <= 1)");
    }
    a.boxes = f;
    a.flips = fl.to(at::kByte).contiguous();
  } else {
    TORCH_CHECK(scale.size() == 2 && ratio.size() == 2, "crop_and_lookup: scale and ratio must be (min, max) pairs");
    TORCH_CHECK(0 < scale[0] && scale[0] <= scale[1] && std::isfinite(scale[1]),
                "crop_and_lookup: scale must satisfy 0 < min <= max, got (", scale[0], ", ", scale[1], ")");
    TORCH_CHECK(0 < ratio[0] && ratio[0] <= ratio[1] && std::isfinite(ratio[1]),
                "crop_and_lookup: ratio must satisfy 0 < min <= max, got (", ratio[0], ", ", ratio[1], ")");
    TORCH_CHECK(flip_prob >= 0 && flip_prob <= 1, "crop_and_lookup: flip_prob must be in [0, 1], got ", flip_prob);
    a.seed = *seed;
    a.step = step;
    a.rrc.scale_lo = scale[0];
    a.rrc.scale_hi = scale[1];
    a.rrc.log_ratio_lo = std::log(ratio[0]);
    a.rrc.log_ratio_hi = std::log(ratio[1]);
    a.rrc.ratio_min = ratio[0];
    a.rrc.ratio_max = ratio[1];
    a.rrc.flip_prob = flip_prob;
  }

  // Label gather: rows [image_id, slot] of [N, SLI, k] tables.
  at::Tensor g_ids = at::empty({0}, images.options().dtype(at::kLong));
  at::Tensor g_codes = at::empty({0}, images.options());
  TORCH_CHECK(label_ids.has_value() == label_codes.has_value() && label_ids.has_value() == slots.has_value(),
              "crop_and_lookup: label_ids, label_codes and slots must be given together");
  if (label_ids.has_value()) {
    const at::Tensor& li = *label_ids;
    const at::Tensor& lc = *label_codes;
    check_device(images, li, "label_ids");
    check_device(images, lc, "label_codes");
    check_device(images, *slots, "slots");
    TORCH_CHECK(li.dim() == 3 && li.size(0) == a.N, "crop_and_lookup: label_ids must have shape [N = ", a.N,
                ", SLI, k], got ", li.sizes());
    TORCH_CHECK(lc.sizes() == li.sizes(), "crop_and_lookup: label_codes must have the shape of label_ids ",
                li.sizes(), ", got ", lc.sizes());
    TORCH_CHECK(li.size(1) >= 1, "crop_and_lookup: the label tables have no slots");
    const int64_t sli = li.size(1), k = li.size(2);
    at::Tensor sl = check_index(*slots, a.B, sli, "slots", "slots per image");
    at::Tensor rows = a.ids * sli + sl;
    g_ids = li.reshape({a.N * sli, k}).index_select(0, rows);
    g_codes = lc.reshape({a.N * sli, k}).index_select(0, rows);
  }

  const int64_t S = a.S;
  at::Tensor out = channels_last
                       ? at::empty({a.B, S, S, 3}, images.options().dtype(out_dtype)).permute({0, 3, 1, 2})
                       : at::empty({a.B, 3, S, S}, images.options().dtype(out_dtype));
  at::Tensor pix = at::empty({a.B, 4}, images.options().dtype(at::kInt));
  at::Tensor fu = at::empty({a.B}, images.options().dtype(at::kByte));
  if (a.B > 0) kernel(a, pix, fu, out);
  // Boxes used, as fractions (hald_ext.boxes.pixels_to_boxes).
  at::Tensor denom = at::tensor({double(a.H), double(a.W), double(a.H), double(a.W)},
                                images.options().dtype(at::kDouble));
  at::Tensor boxes_used = (pix.to(at::kDouble) / denom).to(at::kFloat);
  return {out, boxes_used, fu.to(at::kBool), g_ids, g_codes};
}

}  // namespace hald

TORCH_LIBRARY_FRAGMENT(hald, m) {
  // Crops of uint8 NHWC images resized to out_size x out_size, flipped and normalised, with the boxes
  // used (fractions), the flips used, and (when label tables are given) the gathered label rows.
  m.def(
      "crop_and_lookup(Tensor images, Tensor image_ids, int out_size, Tensor? boxes, Tensor? flips, "
      "int? seed, int step, float[] scale, float[] ratio, float flip_prob, float[] mean, float[] std, "
      "ScalarType out_dtype, bool channels_last, bool antialias, Tensor? label_ids, Tensor? label_codes, "
      "Tensor? slots) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
