// The crop_and_lookup op's pieces shared by its backends: the argument list (written once, below), the
// validated arguments, the per-sample geometry, and the checks every backend runs (crop_and_lookup.cpp).
// Each backend's kernel file registers its own kernel (cpu/crop_and_lookup_kernel.cpp,
// cuda/crop_and_lookup_kernel.cu): crop_and_lookup_checked() -> allocate -> pixels -> crop_results().
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <tuple>

#include "hald/crop_geometry.h"
#include "hald/op_front.h"
#include "hald/resample.h"

// The op's arguments in schema order (the schema's comment is in crop_and_lookup.cpp); arguments added
// later go last, so positional calls written for an older schema keep working.
#define HALD_CROP_OP_ARGS(X)                                                                      \
  X(Tensor, images) X(OptTensor, image_sizes) X(Tensor, image_ids) X(Int, size) X(OptTensor, boxes) \
  X(OptTensor, flips) X(OptTensor, label_ids) X(OptTensor, label_values) X(OptTensor, slots)         \
  X(OptTensor, mix_partner) X(OptTensor, mix_boxes) X(Int, seed) X(Int, offset) X(Floats, scale)      \
  X(Floats, ratio) X(Float, flip_prob) X(Floats, mean) X(Floats, std) X(Bool, antialias)              \
  X(ScalarType, out_dtype) X(Bool, channels_last) X(Bool, check) X(OptTensorDefaultNone, image_offsets) X(IntDefaultMinus1, out_rows) \
  X(IntsDefaultEmpty, max_image_size)

namespace hald {

HALD_DEFINE_OP_ARGS(CropOpArgs, HALD_CROP_OP_ARGS)

// Per-sample geometry after replay / sampling: which image, which pixels, flipped or not.
struct SampleGeom {
  int32_t img;
  int32_t top, left, h, w;
  int32_t flip;
};

// Raw pointers the geometry stage reads (shared by the CPU loop and the CUDA geometry kernel).
struct GeomInputs {
  const int64_t* image_ids;  // [B]
  const int32_t* sizes;      // [N, 2], or nullptr: every image fills the batch (Hmax x Wmax)
  const double* boxes;       // [B, 4] or nullptr (fresh crops)
  const uint8_t* flips;      // [B] or nullptr (fresh flips)
  const int64_t* offsets;    // [N] packed images: byte offset of each image (rows of width * 3), or nullptr
  int64_t total;             // packed images: bytes in the buffer
  RrcParams rrc;
  int32_t N, Hmax, Wmax;     // bounds every index is clamped to (check=False must not read out of bounds)
};

HALD_HD int64_t clamp_index(int64_t v, int64_t n) { return v < 0 ? 0 : (v >= n ? n - 1 : v); }

HALD_HD bool packed_image_inside(int64_t offset, int64_t H, int64_t W, int64_t total) {
  return offset >= 0 && offset <= total - H * W * 3;
}

// Where the crops' images are: a padded batch [N, Hmax, Wmax, 3], or packed images (one flat buffer,
// image n at byte offsets[n], its rows W_n * 3 bytes apart, no padding).
struct ImageLayout {
  const uint8_t* images;
  const int64_t* offsets;  // packed, or nullptr (padded)
  const int32_t* sizes;    // [N, 2] (packed: required)
  int64_t total, N, Hmax, Wmax;
};

// The address of pixel (top, left) of sample g's image and the image's row stride (bytes). Packed
// images out of the buffer (check=False only) were given a 1x1 crop at (0, 0) by resolve_sample; their
// offset is clamped here, so no read leaves the buffer.
HALD_HD const uint8_t* image_origin(const ImageLayout& l, const SampleGeom& g, int64_t* stride) {
  if (l.offsets == nullptr) {
    *stride = l.Wmax * 3;
    return l.images + int64_t(g.img) * l.Hmax * *stride + int64_t(g.top) * *stride + int64_t(g.left) * 3;
  }
  const int64_t H = clamp_index(l.sizes[2 * g.img], l.Hmax + 1), W = clamp_index(l.sizes[2 * g.img + 1], l.Wmax + 1);
  int64_t off = l.offsets[g.img];
  if (!packed_image_inside(off, H > 1 ? H : 1, W > 1 ? W : 1, l.total)) {
    off = off < 0 ? 0 : (off > l.total - 3 ? l.total - 3 : off);
  }
  *stride = W * 3;
  return l.images + off + int64_t(g.top) * *stride + int64_t(g.left) * 3;
}

// Sample b's image, pixel box and flip; also the box actually cropped, as fractions of its image.
HALD_HD SampleGeom resolve_sample(const GeomInputs& in, int64_t b, float* box_out) {
  SampleGeom g;
  g.img = int32_t(clamp_index(in.image_ids[b], in.N));
  const int32_t H = in.sizes != nullptr ? int32_t(clamp_index(in.sizes[2 * g.img], in.Hmax + 1)) : in.Hmax;
  int32_t W = in.sizes != nullptr ? int32_t(clamp_index(in.sizes[2 * g.img + 1], in.Wmax + 1)) : in.Wmax;
  // A packed image must lie inside the buffer (only reachable with check=False): else the 1x1 crop below,
  // which image_origin() reads at a clamped offset.
  if (in.offsets != nullptr && !packed_image_inside(in.offsets[g.img], H, W, in.total)) W = 0;
  if (H < 1 || W < 1) {  // only reachable with check=False and bad sizes: an empty-safe 1x1 crop
    g.top = g.left = 0;
    g.h = g.w = 1;
    g.flip = 0;
    box_out[0] = box_out[1] = box_out[2] = box_out[3] = 0.f;
    return g;
  }
  PixelBox p;
  if (in.boxes != nullptr) {
    const double* bx = in.boxes + 4 * b;
    p = fraction_box_to_pixels(bx[0], bx[1], bx[2], bx[3], H, W);
  } else {
    p = sample_rrc(in.rrc, b, H, W);
  }
  g.top = p.top;
  g.left = p.left;
  g.h = p.h;
  g.w = p.w;
  g.flip = in.flips != nullptr ? int32_t(in.flips[b] != 0) : int32_t(sample_flip(in.rrc, b));
  box_out[0] = float(double(p.top) / H);
  box_out[1] = float(double(p.left) / W);
  box_out[2] = float(double(p.h) / H);
  box_out[3] = float(double(p.w) / W);
  return g;
}

// Arguments after validation. Every tensor is on the images' device and contiguous.
struct CropArgs {
  at::Tensor images;        // uint8 [N, Hmax, Wmax, 3], or packed: uint8 [total] with offsets
  at::Tensor sizes;         // int32 [N, 2] (true height, width of each image) or undefined (Hmax x Wmax each)
  at::Tensor offsets;       // int64 [N] packed images' byte offsets, or undefined (a padded batch)
  at::Tensor image_ids;     // int64 [B]
  at::Tensor boxes;         // float64 [B, 4] fractions (replay) or undefined (fresh RRC)
  at::Tensor flips;         // uint8 [B] (replay) or undefined (fresh flips with rrc.flip_prob)
  at::Tensor label_ids;     // [N, SLI, k] or undefined
  at::Tensor label_values;  // [N, SLI, k] or undefined
  at::Tensor slots;         // int64 [B] or undefined
  at::Tensor mix_partner;   // int64 [B] (index into the batch) or undefined
  at::Tensor mix_boxes;     // int32 [B, 4] (y0, x0, y1, x1) output pixels, end exclusive
  RrcParams rrc;
  float scale[3];           // out = pixel * scale[c] + shift[c]  (= (pixel/255 - mean) / std)
  float shift[3];
  int64_t B = 0, N = 0, Hmax = 0, Wmax = 0, S = 0, sli = 0, k = 0;
  int64_t out_rows = 0;     // samples rendered (the first ones); the rest give geometry (CutMix partners) only
  bool antialias = true;
  bool channels_last = false;
  c10::ScalarType out_dtype = c10::ScalarType::Float;
};

// Outputs: crops [out_rows,3,S,S], boxes_used float32 [B,4], flips_used bool [B], geometry int32 [B,6]
// (scratch for the crop stage), label rows [B,k] (empty when no labels were asked for).
struct CropOutputs {
  at::Tensor crops, boxes, flips, geom, label_ids, label_values;
};

// What the op returns: (crops, boxes used, flips used, label ids, label values).
using CropResults = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline GeomInputs geom_inputs(const CropArgs& a) {
  GeomInputs in;
  in.image_ids = a.image_ids.data_ptr<int64_t>();
  in.sizes = a.sizes.defined() ? a.sizes.data_ptr<int32_t>() : nullptr;
  in.boxes = a.boxes.defined() ? a.boxes.data_ptr<double>() : nullptr;
  in.flips = a.flips.defined() ? a.flips.data_ptr<uint8_t>() : nullptr;
  in.offsets = a.offsets.defined() ? a.offsets.data_ptr<int64_t>() : nullptr;
  in.total = a.images.numel();
  in.rrc = a.rrc;
  in.N = int32_t(a.N);
  in.Hmax = int32_t(a.Hmax);
  in.Wmax = int32_t(a.Wmax);
  return in;
}

inline ImageLayout image_layout(const CropArgs& a) {
  return ImageLayout{a.images.data_ptr<uint8_t>(), a.offsets.defined() ? a.offsets.data_ptr<int64_t>() : nullptr,
                     a.sizes.defined() ? a.sizes.data_ptr<int32_t>() : nullptr, a.images.numel(), a.N, a.Hmax,
                     a.Wmax};
}

// Every check of the op's arguments (shape / dtype / device always; values when in.check), shared by
// the backends' kernels, which call it first.
CropArgs crop_and_lookup_checked(const CropOpArgs& in);

// The outputs, on the images' device; `crops_allocator` (or the device's default) allocates the crops.
CropOutputs allocate_crop_outputs(const CropArgs& a, c10::Allocator* crops_allocator = nullptr);

inline CropResults crop_results(const CropOutputs& o) {
  return {o.crops, o.boxes, o.flips, o.label_ids, o.label_values};
}

}  // namespace hald
