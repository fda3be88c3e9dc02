// CUDA kernels of crop_and_lookup.
//
//   geometry_kernel: one thread per sample replays or samples its box and flip (the same Philox
//                    stream and rounding as the CPU kernel, from hald/crop_geometry.h), writes the
//                    boxes used and gathers the sample's label rows;
//   crop_kernel:     one block per band of 16 output rows x up to 256 output columns of one sample:
//                    the band's vertical spans (first source row, taps, weights) are computed once
//                    into shared memory, each thread computes its column's horizontal span once, then
//                    walks the band with a sliding window of horizontally filtered source rows in
//                    registers (separable: each source row's horizontal pass is computed once per
//                    column), pastes the CutMix partner inside the mix box, normalises and stores.
//                    No per-pixel span arithmetic and no 64-bit division per pixel.
// Both run on the current stream and never synchronise the host.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "../crop_and_lookup.h"

namespace hald {
namespace {

constexpr int kBlock = 256;

struct GatherArgs {
  const int64_t* slots;     // [B] or nullptr
  const char* label_ids;    // [N, SLI, k]
  const char* label_values;
  char* out_ids;            // [B, k]
  char* out_values;
  int64_t sli;
  int64_t id_row, val_row;  // bytes per row
};

__global__ void geometry_kernel(GeomInputs in, GatherArgs ga, int64_t B, SampleGeom* geom, float* boxes,
                                bool* flips) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const SampleGeom g = resolve_sample(in, b, boxes + 4 * b);
  geom[b] = g;
  flips[b] = g.flip != 0;
  if (ga.slots != nullptr) {
    const int64_t row = int64_t(g.img) * ga.sli + clamp_index(ga.slots[b], ga.sli);
    for (int64_t i = 0; i < ga.id_row; ++i) ga.out_ids[b * ga.id_row + i] = ga.label_ids[row * ga.id_row + i];
    for (int64_t i = 0; i < ga.val_row; ++i)
      ga.out_values[b * ga.val_row + i] = ga.label_values[row * ga.val_row + i];
  }
}

struct PixelArgs {
  ImageLayout layout;
  const SampleGeom* geom;
  const int64_t* partner;  // [B] or nullptr
  const int32_t* mix;      // [B, 4] or nullptr
  int64_t B;
  int32_t S;
  int32_t bands, chunks;   // output tiles per sample: bands of kBand rows x chunks of blockDim.x columns
  bool antialias, channels_last;
  float scale[3], shift[3];
  void* out;  // [B, 3, S, S] in the output dtype, NCHW or channels_last
};

constexpr int kMaxBlock = 256;  // threads per block: one output column each

// Writes the 3 channels of output pixel (y, x) of sample b, normalised, in the output dtype and layout.
template <typename out_t>
__device__ __forceinline__ void store_pixel(const PixelArgs& p, int64_t b, int32_t y, int32_t x, float v0, float v1,
                                           float v2) {
  out_t* out = static_cast<out_t*>(p.out);
  const int64_t plane = int64_t(p.S) * p.S;
  const float o0 = v0 * p.scale[0] + p.shift[0], o1 = v1 * p.scale[1] + p.shift[1], o2 = v2 * p.scale[2] + p.shift[2];
  if (p.channels_last) {
    out_t* d = out + (b * plane + int64_t(y) * p.S + x) * 3;  // [B, S, S, 3] physically
    d[0] = out_t(o0);
    d[1] = out_t(o1);
    d[2] = out_t(o2);
  } else {
    out_t* d = out + b * 3 * plane + int64_t(y) * p.S + x;
    d[0] = out_t(o0);
    d[plane] = out_t(o1);
    d[2 * plane] = out_t(o2);
  }
}

__device__ __forceinline__ CropSource crop_source(const PixelArgs& p, const SampleGeom& g) {
  int64_t stride = 0;
  const uint8_t* origin = image_origin(p.layout, g, &stride);
  return CropSource{origin, stride, g.h, g.w, g.flip != 0};
}

// Blocks per SM the compiler must fit in registers: small windows are held to 64 registers a thread.
constexpr int min_blocks(int W) { return W == 2 || W == 4 ? 4 : 2; }

// One block: kBand output rows x blockDim.x output columns of one sample. The band's vertical spans
// (own crop, and the CutMix partner's when the band meets the box) are computed once into shared
// memory; each thread then renders its column (own pixels, then the partner's inside the box).
template <typename out_t, int W>
__global__ void __launch_bounds__(kMaxBlock, min_blocks(W)) crop_kernel(PixelArgs p) {
  __shared__ BandSpans spans[2];  // own, partner
  const int64_t tile = blockIdx.x;
  const int64_t per_sample = int64_t(p.bands) * p.chunks;
  const int64_t b = tile / per_sample;  // once per block
  const int32_t rest = int32_t(tile - b * per_sample);
  const int32_t y0 = (rest / p.chunks) * kBand;
  const int32_t x = (rest % p.chunks) * int32_t(blockDim.x) + int32_t(threadIdx.x);
  const SampleGeom g = p.geom[b];
  int32_t my0 = 0, mx0 = 0, my1 = 0, mx1 = 0;
  SampleGeom gp = g;
  if (p.partner != nullptr) {
    const int32_t* m = p.mix + 4 * b;
    my0 = max(m[0], 0);
    mx0 = max(m[1], 0);
    my1 = min(m[2], p.S);
    mx1 = min(m[3], p.S);
    if (my1 <= my0 || mx1 <= mx0) my1 = my0;  // empty box: nothing to paste
    gp = p.geom[clamp_index(p.partner[b], p.B)];
  }
  const bool pasted_band = my1 > my0 && my0 < y0 + kBand && my1 > y0;
  const int t = int(threadIdx.x);
  build_band_row(spans[0], g.h, p.S, y0, p.antialias, t);
  if (pasted_band) build_band_row(spans[1], gp.h, p.S, y0, p.antialias, t - kBand);
  __syncthreads();
  if (x >= p.S) return;
  const bool in_box_col = x >= mx0 && x < mx1;
  const auto load = [](const uint8_t* q) { return float(__ldg(q)); };
  const auto store = [&](int32_t y, float v0, float v1, float v2) { store_pixel<out_t>(p, b, y, x, v0, v1, v2); };
  render_band_column<W>(crop_source(p, g), spans[0], p.S, p.antialias, y0, x, load,
                        [&](int32_t y) { return !(in_box_col && y >= my0 && y < my1); }, store);
  if (pasted_band && in_box_col) {
    render_band_column<W>(crop_source(p, gp), spans[1], p.S, p.antialias, y0, x, load,
                          [&](int32_t y) { return y >= my0 && y < my1; }, store);
  }
}

void crop_and_lookup_cuda_kernel(const CropArgs& a, CropOutputs& o) {
  const c10::cuda::CUDAGuard guard(a.images.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(a.images.device().index()).stream();

  GatherArgs ga{};
  if (a.label_ids.defined()) {
    ga.slots = a.slots.data_ptr<int64_t>();
    ga.label_ids = static_cast<const char*>(a.label_ids.const_data_ptr());
    ga.label_values = static_cast<const char*>(a.label_values.const_data_ptr());
    ga.out_ids = static_cast<char*>(o.label_ids.data_ptr());
    ga.out_values = static_cast<char*>(o.label_values.data_ptr());
    ga.sli = a.sli;
    ga.id_row = a.k * a.label_ids.element_size();
    ga.val_row = a.k * a.label_values.element_size();
  }
  static_assert(sizeof(SampleGeom) == 6 * sizeof(int32_t), "geometry scratch is [B, 6] int32");
  auto* geom = reinterpret_cast<SampleGeom*>(o.geom.data_ptr<int32_t>());
  const int64_t gblocks = (a.B + kBlock - 1) / kBlock;
  geometry_kernel<<<gblocks, kBlock, 0, stream>>>(geom_inputs(a), ga, a.B, geom, o.boxes.data_ptr<float>(),
                                                  o.flips.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (a.out_rows == 0) return;

  PixelArgs p{};
  p.layout = image_layout(a);
  p.geom = geom;
  p.partner = a.mix_partner.defined() ? a.mix_partner.data_ptr<int64_t>() : nullptr;
  p.mix = a.mix_boxes.defined() ? a.mix_boxes.data_ptr<int32_t>() : nullptr;
  p.B = a.B;
  p.S = int32_t(a.S);
  p.antialias = a.antialias;
  p.channels_last = a.channels_last;
  for (int c = 0; c < 3; ++c) {
    p.scale[c] = a.scale[c];
    p.shift[c] = a.shift[c];
  }
  p.out = o.crops.data_ptr();
  // One thread per output column (S = 224: 7 warps, one chunk), at least 2 * kBand threads so the
  // band tables (own + partner) are built in one step.
  const int threads = int(std::min<int64_t>(std::max<int64_t>((a.S + 31) / 32 * 32, 2 * kBand), kMaxBlock));
  p.chunks = int32_t((a.S + threads - 1) / threads);
  p.bands = int32_t((a.S + kBand - 1) / kBand);
  const int64_t blocks = a.out_rows * p.bands * p.chunks;  // rendered samples only
  TORCH_CHECK(blocks <= int64_t(INT32_MAX), "crop_and_lookup: batch too large for one launch (", a.B,
              " crops of ", a.S, " x ", a.S, ")");
  // The window holds every tap of every crop of the batch: crops are at most Hmax x Wmax pixels, so
  // the taps of an Hmax x Wmax crop bound them all (256 px sources at S = 224: 4; no antialias: 2).
  const int window = band_window(int32_t(a.Hmax), int32_t(a.Wmax), p.S, a.antialias);
  const auto launch = [&](auto out_tag) {
    using out_t = decltype(out_tag);
    switch (window) {
      case 2: crop_kernel<out_t, 2><<<unsigned(blocks), threads, 0, stream>>>(p); break;
      case 4: crop_kernel<out_t, 4><<<unsigned(blocks), threads, 0, stream>>>(p); break;
      case 8: crop_kernel<out_t, 8><<<unsigned(blocks), threads, 0, stream>>>(p); break;
      case kWinMax: crop_kernel<out_t, kWinMax><<<unsigned(blocks), threads, 0, stream>>>(p); break;
      default: crop_kernel<out_t, 0><<<unsigned(blocks), threads, 0, stream>>>(p); break;
    }
  };
  switch (a.out_dtype) {
    case at::kFloat: launch(float{}); break;
    case at::kHalf: launch(c10::Half{}); break;
    default: launch(c10::BFloat16{}); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

CropResults crop_and_lookup_cuda(const CropOpArgs& in) {
  const CropArgs a = crop_and_lookup_checked(in);
  CropOutputs o = allocate_crop_outputs(a);
  if (a.B > 0) crop_and_lookup_cuda_kernel(a, o);
  return crop_results(o);
}

}  // namespace
}  // namespace hald

TORCH_LIBRARY_IMPL(hald, CUDA, m) { HALD_IMPL_BOXED(m, "crop_and_lookup", hald::CropOpArgs, hald::crop_and_lookup_cuda); }
