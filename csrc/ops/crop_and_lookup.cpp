// Schema and argument checks of the fused random-resized-crop + label lookup op, shared by every
// backend. Shape / dtype / device checks are free; value checks (ids, slots, boxes in range) read
// the tensors, which on CUDA synchronises the host, so they run only with check=True.
#include "crop_and_lookup.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

namespace hald {

namespace {

constexpr const char* kOp = "crop_and_lookup: ";

void check_device(const at::Tensor& images, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == images.device(), kOp, name, " is on ", t.device(), " but images are on ",
              images.device(), " (all inputs must be on one device)");
}

void check_integer(const at::Tensor& t, const char* name) {
  TORCH_CHECK(!t.is_floating_point() && !t.is_complex() && t.scalar_type() != at::kBool, kOp, name,
              " must be an integer tensor, got ", t.scalar_type());
}

at::Tensor batch_index(const at::Tensor& images, const at::Tensor& t, int64_t B, const char* name) {
  check_device(images, t, name);
  check_integer(t, name);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == B, kOp, name, " must have shape [", B, "], got ", t.sizes());
  return t.to(at::kLong).contiguous();
}

// Host-side range check of an index tensor (one reduction; syncs on CUDA, hence `check`).
void check_range(const at::Tensor& t, int64_t lo, int64_t hi, const char* name, const char* what) {
  if (t.numel() == 0) return;
  const auto mm = at::aminmax(t);
  const int64_t mn = std::get<0>(mm).item<int64_t>(), mx = std::get<1>(mm).item<int64_t>();
  TORCH_CHECK(mn >= lo && mx < hi, kOp, name, " out of range: values must be in [", lo, ", ", hi, ") (", what,
              "), got min ", mn, " max ", mx);
}

std::array<double, 2> pair_arg(at::ArrayRef<double> v, const char* name) {
  TORCH_CHECK(v.size() == 2, kOp, name, " must have two values (lo, hi), got ", v.size());
  TORCH_CHECK(std::isfinite(v[0]) && std::isfinite(v[1]) && v[0] > 0 && v[0] <= v[1], kOp, name,
              " must be 0 < lo <= hi, got (", v[0], ", ", v[1], ")");
  return {v[0], v[1]};
}

}  // namespace

CropArgs prepare_crop(const at::Tensor& images, const std::optional<at::Tensor>& image_sizes,
                      const at::Tensor& image_ids, int64_t size, const std::optional<at::Tensor>& boxes,
                      const std::optional<at::Tensor>& flips, const std::optional<at::Tensor>& label_ids,
                      const std::optional<at::Tensor>& label_values, const std::optional<at::Tensor>& slots,
                      const std::optional<at::Tensor>& mix_partner, const std::optional<at::Tensor>& mix_boxes,
                      int64_t seed, int64_t offset, at::ArrayRef<double> scale, at::ArrayRef<double> ratio,
                      double flip_prob, at::ArrayRef<double> mean, at::ArrayRef<double> stdv, bool antialias,
                      c10::ScalarType out_dtype, bool channels_last, bool check) {
  CropArgs a;
  TORCH_CHECK(images.scalar_type() == at::kByte, kOp, "images must be uint8, got ", images.scalar_type());
  TORCH_CHECK(images.dim() == 4 && images.size(3) == 3, kOp,
              "images must be [N, H, W, 3] (NHWC RGB), got shape ", images.sizes());
  TORCH_CHECK(images.size(0) > 0 && images.size(1) > 0 && images.size(2) > 0, kOp, "images must not be empty, got ",
              images.sizes());
  TORCH_CHECK(images.size(1) < (1 << 24) && images.size(2) < (1 << 24), kOp, "images are too large");
  TORCH_CHECK(size > 0 && size <= 8192, kOp, "size must be in [1, 8192], got ", size);
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16, kOp,
              "out_dtype must be float32, float16 or bfloat16, got ", out_dtype);
  a.images = images.contiguous();
  a.N = images.size(0);
  a.Hmax = images.size(1);
  a.Wmax = images.size(2);
  a.S = size;
  a.antialias = antialias;
  a.out_dtype = out_dtype;
  a.channels_last = channels_last;

  check_device(images, image_ids, "image_ids");
  check_integer(image_ids, "image_ids");
  TORCH_CHECK(image_ids.dim() == 1, kOp, "image_ids must be 1-D [B], got ", image_ids.sizes());
  a.B = image_ids.size(0);
  a.image_ids = image_ids.to(at::kLong).contiguous();
  if (check) check_range(a.image_ids, 0, a.N, "image_ids", "indices into images");

  if (image_sizes.has_value()) {
    const at::Tensor& s = *image_sizes;
    check_device(images, s, "image_sizes");
    check_integer(s, "image_sizes");
    TORCH_CHECK(s.dim() == 2 && s.size(0) == a.N && s.size(1) == 2, kOp, "image_sizes must be [", a.N,
                ", 2] (height, width per image), got ", s.sizes());
    a.sizes = s.to(at::kInt).contiguous();
    if (check) {
      check_range(a.sizes.select(1, 0), 1, a.Hmax + 1, "image_sizes[:, 0]", "heights within the padded batch");
      check_range(a.sizes.select(1, 1), 1, a.Wmax + 1, "image_sizes[:, 1]", "widths within the padded batch");
    }
  } else {
    a.sizes = at::tensor({int32_t(a.Hmax), int32_t(a.Wmax)}, images.options().dtype(at::kInt)).expand({a.N, 2})
                  .contiguous();
  }

  if (boxes.has_value()) {
    const at::Tensor& b = *boxes;
    check_device(images, b, "boxes");
    TORCH_CHECK(b.dim() == 2 && b.size(0) == a.B && b.size(1) == 4, kOp, "boxes must be [", a.B,
                ", 4] (y, x, h, w fractions or uint16 codes), got ", b.sizes());
    if (b.scalar_type() == at::kUInt16) {
      a.boxes = b.to(at::kInt).to(at::kDouble).div_(65535.0).contiguous();
    } else {
      TORCH_CHECK(b.scalar_type() == at::kFloat || b.scalar_type() == at::kDouble, kOp,
                  "boxes must be float32/float64 fractions or uint16 codes, got ", b.scalar_type());
      a.boxes = b.to(at::kDouble).contiguous();
    }
    if (check && a.B > 0) {
      // Quantised boxes may overshoot the far edge by one code; anything more is a box outside the image.
      constexpr double tol = 2.0 / 65535.0;
      const at::Tensor& d = a.boxes;
      const bool finite = at::isfinite(d).all().item<bool>();
      const bool inside = at::logical_and(d.ge(0), d.le(1)).all().item<bool>();
      const bool positive = d.narrow(1, 2, 2).gt(0).all().item<bool>();
      const bool ends = (d.select(1, 0) + d.select(1, 2)).le(1 + tol).all().item<bool>() &&
                        (d.select(1, 1) + d.select(1, 3)).le(1 + tol).all().item<bool>();
      TORCH_CHECK(finite && inside && positive && ends, kOp,
                  "boxes outside the image: every (y, x, h, w) must be finite, in [0, 1], with h, w > 0, "
                  "y + h <= 1 and x + w <= 1");
    }
  } else {
    const auto s = pair_arg(scale, "scale");
    const auto r = pair_arg(ratio, "ratio");
    TORCH_CHECK(s[1] <= 1.0, kOp, "scale must be within (0, 1], got (", s[0], ", ", s[1], ")");
    a.rrc.scale_lo = s[0];
    a.rrc.scale_hi = s[1];
    a.rrc.ratio_lo = r[0];
    a.rrc.ratio_hi = r[1];
    a.rrc.log_ratio_lo = std::log(r[0]);
    a.rrc.log_ratio_hi = std::log(r[1]);
  }
  a.rrc.key0 = uint32_t(uint64_t(seed));
  a.rrc.key1 = uint32_t(uint64_t(seed) >> 32);
  a.rrc.offset = uint64_t(offset);
  TORCH_CHECK(flip_prob >= 0 && flip_prob <= 1, kOp, "flip_prob must be in [0, 1], got ", flip_prob);
  a.rrc.flip_prob = flip_prob;

  if (flips.has_value()) {
    const at::Tensor& f = *flips;
    check_device(images, f, "flips");
    TORCH_CHECK(f.dim() == 1 && f.size(0) == a.B, kOp, "flips must have shape [", a.B, "], got ", f.sizes());
    TORCH_CHECK(f.scalar_type() == at::kBool || f.scalar_type() == at::kByte, kOp,
                "flips must be bool or uint8, got ", f.scalar_type());
    a.flips = f.to(at::kByte).contiguous();
  }

  // Label rows gathered in the same launch: [N, SLI, k] tensors indexed by (image_id, slot).
  TORCH_CHECK(label_ids.has_value() == label_values.has_value(), kOp,
              "label_ids and label_values must be given together");
  TORCH_CHECK(!label_ids.has_value() || slots.has_value(), kOp, "label rows need slots (one per sample)");
  if (label_ids.has_value()) {
    const at::Tensor& li = *label_ids;
    const at::Tensor& lv = *label_values;
    check_device(images, li, "label_ids");
    check_device(images, lv, "label_values");
    TORCH_CHECK(li.dim() == 3 && li.size(0) == a.N, kOp, "label_ids must be [", a.N,
                ", SLI, k] (one row per image and slot), got ", li.sizes());
    TORCH_CHECK(lv.sizes() == li.sizes(), kOp, "label_values must have the shape of label_ids ", li.sizes(),
                ", got ", lv.sizes());
    check_integer(li, "label_ids");
    a.label_ids = li.contiguous();
    a.label_values = lv.contiguous();
    a.sli = li.size(1);
    a.k = li.size(2);
  }
  if (slots.has_value()) {
    TORCH_CHECK(label_ids.has_value(), kOp, "slots were given without label_ids / label_values to gather");
    a.slots = batch_index(images, *slots, a.B, "slots");
    if (check) check_range(a.slots, 0, a.sli, "slots", "stored crops per image");
  }

  TORCH_CHECK(mix_partner.has_value() == mix_boxes.has_value(), kOp,
              "mix_partner and mix_boxes must be given together (CutMix)");
  if (mix_partner.has_value()) {
    a.mix_partner = batch_index(images, *mix_partner, a.B, "mix_partner");
    const at::Tensor& mb = *mix_boxes;
    check_device(images, mb, "mix_boxes");
    check_integer(mb, "mix_boxes");
    TORCH_CHECK(mb.dim() == 2 && mb.size(0) == a.B && mb.size(1) == 4, kOp, "mix_boxes must be [", a.B,
                ", 4] (y0, x0, y1, x1 output pixels), got ", mb.sizes());
    a.mix_boxes = mb.to(at::kInt).contiguous();
    if (check && a.B > 0) {
      check_range(a.mix_partner, 0, a.B, "mix_partner", "indices into the batch");
      check_range(a.mix_boxes, 0, a.S + 1, "mix_boxes", "output pixels");
      const bool ordered = a.mix_boxes.select(1, 0).le(a.mix_boxes.select(1, 2)).all().item<bool>() &&
                           a.mix_boxes.select(1, 1).le(a.mix_boxes.select(1, 3)).all().item<bool>();
      TORCH_CHECK(ordered, kOp, "mix_boxes must have y0 <= y1 and x0 <= x1");
    }
  }

  TORCH_CHECK(mean.size() == 3 && stdv.size() == 3, kOp, "mean and std must have 3 values (RGB), got ", mean.size(),
              " and ", stdv.size());
  for (int c = 0; c < 3; ++c) {
    TORCH_CHECK(std::isfinite(mean[c]) && std::isfinite(stdv[c]) && stdv[c] > 0, kOp,
                "mean must be finite and std positive, got mean ", mean, " std ", stdv);
    a.scale[c] = float(1.0 / (255.0 * stdv[c]));
    a.shift[c] = float(-mean[c] / stdv[c]);
  }
  return a;
}

CropOutputs allocate_crop_outputs(const CropArgs& a) {
  CropOutputs o;
  const auto opt = a.images.options();
  o.crops = a.channels_last
                ? at::empty({a.B, 3, a.S, a.S}, opt.dtype(a.out_dtype).memory_format(at::MemoryFormat::ChannelsLast))
                : at::empty({a.B, 3, a.S, a.S}, opt.dtype(a.out_dtype));
  o.boxes = at::empty({a.B, 4}, opt.dtype(at::kFloat));
  o.flips = at::empty({a.B}, opt.dtype(at::kBool));
  o.geom = at::empty({a.B, 6}, opt.dtype(at::kInt));
  if (a.label_ids.defined()) {
    o.label_ids = at::empty({a.B, a.k}, a.label_ids.options());
    o.label_values = at::empty({a.B, a.k}, a.label_values.options());
  } else {
    o.label_ids = at::empty({0}, opt.dtype(at::kLong));
    o.label_values = at::empty({0}, opt.dtype(at::kFloat));
  }
  return o;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> crop_and_lookup_impl(
    CropKernel kernel, const at::Tensor& images, const std::optional<at::Tensor>& image_sizes,
    const at::Tensor& image_ids, int64_t size, const std::optional<at::Tensor>& boxes,
    const std::optional<at::Tensor>& flips, const std::optional<at::Tensor>& label_ids,
    const std::optional<at::Tensor>& label_values, const std::optional<at::Tensor>& slots,
    const std::optional<at::Tensor>& mix_partner, const std::optional<at::Tensor>& mix_boxes, int64_t seed,
    int64_t offset, at::ArrayRef<double> scale, at::ArrayRef<double> ratio, double flip_prob,
    at::ArrayRef<double> mean, at::ArrayRef<double> stdv, bool antialias, c10::ScalarType out_dtype,
    bool channels_last, bool check) {
  const CropArgs a = prepare_crop(images, image_sizes, image_ids, size, boxes, flips, label_ids, label_values, slots,
                                  mix_partner, mix_boxes, seed, offset, scale, ratio, flip_prob, mean, stdv, antialias,
                                  out_dtype, channels_last, check);
  CropOutputs o = allocate_crop_outputs(a);
  if (a.B > 0) kernel(a, o);
  return {o.crops, o.boxes, o.flips, o.label_ids, o.label_values};
}

}  // namespace hald

TORCH_LIBRARY_FRAGMENT(hald, m) {
  // Crops B samples out of uint8 NHWC images (a padded batch when image_sizes is given), resizes
  // each to size x size (bilinear, antialiased when downscaling if antialias), flips and normalises.
  // Replay: `boxes` [B,4] (fractions or uint16 codes) + `flips`; fresh: torchvision's RRC rule drawn
  // from (seed, offset) with `scale` / `ratio`, flips with `flip_prob` when `flips` is None.
  // Optional: label rows [N,SLI,k] gathered at (image_id, slot); CutMix pasting, for each sample,
  // the partner sample's crop inside mix_boxes (y0, x0, y1, x1 output pixels).
  // Returns (crops [B,3,S,S], boxes used (fractions, float32 [B,4]), flips used (bool [B]),
  // gathered label ids [B,k], gathered label values [B,k]); the label outputs are empty without labels.
  m.def(
      "crop_and_lookup(Tensor images, Tensor? image_sizes, Tensor image_ids, int size, Tensor? boxes, "
      "Tensor? flips, Tensor? label_ids, Tensor? label_values, Tensor? slots, Tensor? mix_partner, "
      "Tensor? mix_boxes, int seed, int offset, float[] scale, float[] ratio, float flip_prob, float[] mean, "
      "float[] std, bool antialias, ScalarType out_dtype, bool channels_last, bool check) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
