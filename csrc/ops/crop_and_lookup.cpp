// The crop_and_lookup op: its schema and the checks every backend runs before its kernel (the kernels
// register themselves: cpu/crop_and_lookup_kernel.cpp, cuda/crop_and_lookup_kernel.cu).
// Shape / dtype / device checks are free; value checks (ids, slots, boxes in range) read the
// tensors, which on CUDA synchronises the host, so they run only with check=True. With check=False
// nothing here waits for the device (no host-built tensors are copied either).
#include "crop_and_lookup.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
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

std::array<double, 2> pair_arg(const std::vector<double>& v, const char* name) {
  TORCH_CHECK(v.size() == 2, kOp, name, " must have two values (lo, hi), got ", v.size());
  TORCH_CHECK(std::isfinite(v[0]) && std::isfinite(v[1]) && v[0] > 0 && v[0] <= v[1], kOp, name,
              " must be 0 < lo <= hi, got (", v[0], ", ", v[1], ")");
  return {v[0], v[1]};
}


// Packed images: one flat uint8 buffer, image n's H_n x W_n x 3 bytes at image_offsets[n] (no padding),
// image_sizes required. The kernels need the largest height and width on the host: max_image_size
// (H, W) gives them, else they are read from image_sizes (on CUDA: one wait for the device, even with
// check=False). Every image must lie inside the buffer and within max_image_size (checked with
// check=True; with check=False the kernels clamp both instead of reading outside).
void prepare_packed(const CropOpArgs& in, CropArgs& a) {
  const at::Tensor& images = in.images;
  const at::Tensor& off = *in.image_offsets;
  TORCH_CHECK(images.dim() == 1 && images.numel() >= 3, kOp,
              "with image_offsets, images must be one flat uint8 buffer [total bytes] holding at least one "
              "pixel, got shape ", images.sizes());
  check_device(images, off, "image_offsets");
  check_integer(off, "image_offsets");
  TORCH_CHECK(off.dim() == 1 && off.size(0) > 0, kOp, "image_offsets must be 1-D [N] (one per image), got ",
              off.sizes());
  TORCH_CHECK(in.image_sizes.has_value(), kOp, "image_offsets need image_sizes [N, 2] (packed images have no "
              "common shape)");
  const at::Tensor& s = *in.image_sizes;
  check_device(images, s, "image_sizes");
  check_integer(s, "image_sizes");
  const int64_t N = off.size(0);
  TORCH_CHECK(s.dim() == 2 && s.size(0) == N && s.size(1) == 2, kOp, "image_sizes must be [", N,
              ", 2] (height, width of each packed image), got ", s.sizes());
  a.images = images.contiguous();
  a.offsets = off.to(at::kLong).contiguous();
  a.sizes = s.to(at::kInt).contiguous();
  a.N = N;
  const std::vector<int64_t>& bound = in.max_image_size;
  TORCH_CHECK(bound.empty() || bound.size() == 2, kOp, "max_image_size must be [] or (height, width), got ",
              bound.size(), " values");
  if (bound.size() == 2) {
    TORCH_CHECK(bound[0] >= 1 && bound[1] >= 1 && bound[0] < (1 << 24) && bound[1] < (1 << 24), kOp,
                "max_image_size must be in [1, 2^24), got (", bound[0], ", ", bound[1], ")");
    a.Hmax = bound[0];
    a.Wmax = bound[1];
  } else {
    const at::Tensor mx = std::get<0>(at::max(a.sizes, 0)).cpu();
    a.Hmax = std::max<int64_t>(mx[0].item<int32_t>(), 1);
    a.Wmax = std::max<int64_t>(mx[1].item<int32_t>(), 1);
    TORCH_CHECK(a.Hmax < (1 << 24) && a.Wmax < (1 << 24), kOp, "images are too large");
  }
  if (in.check) {
    check_range(a.sizes, 1, int64_t(1) << 24, "image_sizes", "heights and widths of the packed images");
    if (bound.size() == 2) {
      check_range(a.sizes.select(1, 0), 1, a.Hmax + 1, "image_sizes[:, 0]", "heights within max_image_size");
      check_range(a.sizes.select(1, 1), 1, a.Wmax + 1, "image_sizes[:, 1]", "widths within max_image_size");
    }
    const at::Tensor end = a.offsets + a.sizes.select(1, 0).to(at::kLong) * a.sizes.select(1, 1).to(at::kLong) * 3;
    check_range(a.offsets, 0, a.images.numel(), "image_offsets", "byte offsets into images");
    const int64_t last = end.max().item<int64_t>();
    TORCH_CHECK(last <= a.images.numel(), kOp, "image_offsets / image_sizes: a packed image ends at byte ", last,
                " but images holds ", a.images.numel(), " bytes");
  }
}

// images, output size / dtype / layout, the samples' image ids and the images' true sizes.
void prepare_images(const CropOpArgs& in, CropArgs& a) {
  const at::Tensor& images = in.images;
  TORCH_CHECK(images.scalar_type() == at::kByte, kOp, "images must be uint8, got ", images.scalar_type());
  TORCH_CHECK(in.size > 0 && in.size <= 8192, kOp, "size must be in [1, 8192], got ", in.size);
  if (in.image_offsets.has_value()) {
    prepare_packed(in, a);
  } else {
    TORCH_CHECK(in.max_image_size.empty(), kOp, "max_image_size is for packed images (image_offsets); a padded "
                "batch's bound is its shape");
    TORCH_CHECK(images.dim() == 4 && images.size(3) == 3, kOp,
                "images must be [N, H, W, 3] (NHWC RGB), got shape ", images.sizes());
    TORCH_CHECK(images.size(0) > 0 && images.size(1) > 0 && images.size(2) > 0, kOp,
                "images must not be empty, got ", images.sizes());
    TORCH_CHECK(images.size(1) < (1 << 24) && images.size(2) < (1 << 24), kOp, "images are too large");
    a.images = images.contiguous();
    a.N = images.size(0);
    a.Hmax = images.size(1);
    a.Wmax = images.size(2);
  }
  TORCH_CHECK(in.out_dtype == at::kFloat || in.out_dtype == at::kHalf || in.out_dtype == at::kBFloat16, kOp,
              "out_dtype must be float32, float16 or bfloat16, got ", in.out_dtype);
  a.S = in.size;
  a.antialias = in.antialias;
  a.out_dtype = in.out_dtype;
  a.channels_last = in.channels_last;

  check_device(images, in.image_ids, "image_ids");
  check_integer(in.image_ids, "image_ids");
  TORCH_CHECK(in.image_ids.dim() == 1, kOp, "image_ids must be 1-D [B], got ", in.image_ids.sizes());
  a.B = in.image_ids.size(0);
  a.image_ids = in.image_ids.to(at::kLong).contiguous();
  TORCH_CHECK(in.out_rows >= -1 && in.out_rows <= a.B, kOp, "out_rows must be -1 (every sample) or in [0, ", a.B,
              "] (the first samples rendered; the rest only give CutMix partners their crop), got ", in.out_rows);
  a.out_rows = in.out_rows < 0 ? a.B : in.out_rows;
  if (in.check) check_range(a.image_ids, 0, a.N, "image_ids", "indices into images");

  if (in.image_sizes.has_value() && !a.offsets.defined()) {
    const at::Tensor& s = *in.image_sizes;
    check_device(images, s, "image_sizes");
    check_integer(s, "image_sizes");
    TORCH_CHECK(s.dim() == 2 && s.size(0) == a.N && s.size(1) == 2, kOp, "image_sizes must be [", a.N,
                ", 2] (height, width per image), got ", s.sizes());
    a.sizes = s.to(at::kInt).contiguous();
    if (in.check) {
      check_range(a.sizes.select(1, 0), 1, a.Hmax + 1, "image_sizes[:, 0]", "heights within the padded batch");
      check_range(a.sizes.select(1, 1), 1, a.Wmax + 1, "image_sizes[:, 1]", "widths within the padded batch");
    }
  }  // else: a.sizes stays undefined and the kernels use (Hmax, Wmax) for every image
}

// Replayed boxes (fractions or uint16 codes) or the RandomResizedCrop rule; flips; the Philox key.
void prepare_boxes_and_flips(const CropOpArgs& in, CropArgs& a) {
  const at::Tensor& images = a.images;
  if (in.boxes.has_value()) {
    const at::Tensor& b = *in.boxes;
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
    if (in.check && a.B > 0) {
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
    const auto s = pair_arg(in.scale, "scale");
    const auto r = pair_arg(in.ratio, "ratio");
    TORCH_CHECK(s[1] <= 1.0, kOp, "scale must be within (0, 1], got (", s[0], ", ", s[1], ")");
    a.rrc.scale_lo = s[0];
    a.rrc.scale_hi = s[1];
    a.rrc.ratio_lo = r[0];
    a.rrc.ratio_hi = r[1];
    a.rrc.log_ratio_lo = std::log(r[0]);
    a.rrc.log_ratio_hi = std::log(r[1]);
  }
  a.rrc.key0 = uint32_t(uint64_t(in.seed));
  a.rrc.key1 = uint32_t(uint64_t(in.seed) >> 32);
  a.rrc.offset = uint64_t(in.offset);
  TORCH_CHECK(in.flip_prob >= 0 && in.flip_prob <= 1, kOp, "flip_prob must be in [0, 1], got ", in.flip_prob);
  a.rrc.flip_prob = in.flip_prob;

  if (in.flips.has_value()) {
    const at::Tensor& f = *in.flips;
    check_device(images, f, "flips");
    TORCH_CHECK(f.dim() == 1 && f.size(0) == a.B, kOp, "flips must have shape [", a.B, "], got ", f.sizes());
    TORCH_CHECK(f.scalar_type() == at::kBool || f.scalar_type() == at::kByte, kOp,
                "flips must be bool or uint8, got ", f.scalar_type());
    a.flips = f.to(at::kByte).contiguous();
  }
}

// Label rows gathered in the same launch: [N, SLI, k] tensors indexed by (image_id, slot).
void prepare_labels(const CropOpArgs& in, CropArgs& a) {
  TORCH_CHECK(in.label_ids.has_value() == in.label_values.has_value(), kOp,
              "label_ids and label_values must be given together");
  TORCH_CHECK(!in.label_ids.has_value() || in.slots.has_value(), kOp, "label rows need slots (one per sample)");
  if (in.label_ids.has_value()) {
    const at::Tensor& li = *in.label_ids;
    const at::Tensor& lv = *in.label_values;
    check_device(a.images, li, "label_ids");
    check_device(a.images, lv, "label_values");
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
  if (in.slots.has_value()) {
    TORCH_CHECK(in.label_ids.has_value(), kOp, "slots were given without label_ids / label_values to gather");
    a.slots = batch_index(a.images, *in.slots, a.B, "slots");
    if (in.check) check_range(a.slots, 0, a.sli, "slots", "stored crops per image");
  }
}

// CutMix: each sample shows its partner's crop inside its mix box.
void prepare_cutmix(const CropOpArgs& in, CropArgs& a) {
  TORCH_CHECK(in.mix_partner.has_value() == in.mix_boxes.has_value(), kOp,
              "mix_partner and mix_boxes must be given together (CutMix)");
  if (!in.mix_partner.has_value()) return;
  a.mix_partner = batch_index(a.images, *in.mix_partner, a.B, "mix_partner");
  const at::Tensor& mb = *in.mix_boxes;
  check_device(a.images, mb, "mix_boxes");
  check_integer(mb, "mix_boxes");
  TORCH_CHECK(mb.dim() == 2 && mb.size(0) == a.B && mb.size(1) == 4, kOp, "mix_boxes must be [", a.B,
              ", 4] (y0, x0, y1, x1 output pixels), got ", mb.sizes());
  a.mix_boxes = mb.to(at::kInt).contiguous();
  if (in.check && a.B > 0) {
    check_range(a.mix_partner, 0, a.B, "mix_partner", "indices into the batch");
    check_range(a.mix_boxes, 0, a.S + 1, "mix_boxes", "output pixels");
    const bool ordered = a.mix_boxes.select(1, 0).le(a.mix_boxes.select(1, 2)).all().item<bool>() &&
                         a.mix_boxes.select(1, 1).le(a.mix_boxes.select(1, 3)).all().item<bool>();
    TORCH_CHECK(ordered, kOp, "mix_boxes must have y0 <= y1 and x0 <= x1");
  }
}

// out = pixel * scale[c] + shift[c] = (pixel / 255 - mean[c]) / std[c].
void prepare_normalisation(const CropOpArgs& in, CropArgs& a) {
  TORCH_CHECK(in.mean.size() == 3 && in.std.size() == 3, kOp, "mean and std must have 3 values (RGB), got ",
              in.mean.size(), " and ", in.std.size());
  for (int c = 0; c < 3; ++c) {
    TORCH_CHECK(std::isfinite(in.mean[c]) && std::isfinite(in.std[c]) && in.std[c] > 0, kOp,
                "mean must be finite and std positive, got mean ", at::ArrayRef<double>(in.mean), " std ",
                at::ArrayRef<double>(in.std));
    a.scale[c] = float(1.0 / (255.0 * in.std[c]));
    a.shift[c] = float(-in.mean[c] / in.std[c]);
  }
}

}  // namespace

CropOutputs allocate_crop_outputs(const CropArgs& a, c10::Allocator* crops_allocator) {
  CropOutputs o;
  const auto opt = a.images.options();
  const auto layout = a.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (crops_allocator != nullptr) {
    o.crops = at::detail::empty_generic({a.out_rows, 3, a.S, a.S}, crops_allocator, c10::DispatchKeySet(opt.computeDispatchKey()),
                                        a.out_dtype, layout);
  } else {
    o.crops = at::empty({a.out_rows, 3, a.S, a.S}, opt.dtype(a.out_dtype).memory_format(layout));
  }
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

CropArgs crop_and_lookup_checked(const CropOpArgs& in) {
  CropArgs a;
  prepare_images(in, a);
  prepare_boxes_and_flips(in, a);
  prepare_labels(in, a);
  prepare_cutmix(in, a);
  prepare_normalisation(in, a);
  return a;
}

}  // namespace hald

TORCH_LIBRARY_FRAGMENT(hald, m) {
  // Crops B samples out of uint8 NHWC images (a padded batch when image_sizes is given; packed images,
  // one flat buffer with image n at byte image_offsets[n], when image_offsets is given), resizes
  // each to size x size (bilinear, antialiased when downscaling if antialias), flips and normalises.
  // Replay: `boxes` [B,4] (fractions or uint16 codes) + `flips`; fresh: torchvision's RRC rule drawn
  // from (seed, offset) with `scale` / `ratio`, flips with `flip_prob` when `flips` is None.
  // Optional: label rows [N,SLI,k] gathered at (image_id, slot); CutMix pasting, for each sample,
  // the partner sample's crop inside mix_boxes (y0, x0, y1, x1 output pixels).
  // out_rows (default -1: all): render only the first out_rows samples; the others give CutMix
  // partners their crop geometry (a stored CutMix replays the partner's own crop) and are not drawn.
  // max_image_size (default []): (H, W) bounding packed images, so the op need not read it from the
  // device (see prepare_packed).
  // Returns (crops [out_rows,3,S,S], boxes used (fractions, float32 [B,4]), flips used (bool [B]),
  // gathered label ids [B,k], gathered label values [B,k]); the label outputs are empty without labels.
  m.def(hald::CropOpArgs::schema("crop_and_lookup", "(Tensor, Tensor, Tensor, Tensor, Tensor)").c_str());
  // The same op rendered on the CPU by the CUDA kernel's per-thread code (hald/resample.h's
  // render_band_column, with the CUDA tiling): a test hook that checks that code where no GPU is.
  m.def(hald::CropOpArgs::schema("_crop_and_lookup_band", "(Tensor, Tensor, Tensor, Tensor, Tensor)").c_str());
}
