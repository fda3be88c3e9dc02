// CUDA kernels of crop_and_lookup.
//
//   geometry_kernel: one thread per sample replays or samples its box and flip (the same Philox
//                    stream and rounding as the CPU kernel, from hald/crop_geometry.h), writes the
//                    boxes used and gathers the sample's label rows;
//   crop_kernel:     one thread per output pixel evaluates the separable filter directly (weights
//                    from hald/resample.h, computed on the fly: no tables, no shared state), picks
//                    the CutMix partner's geometry inside the mix box, normalises and stores.
// Both run on the current stream and never synchronise the host.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

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
  const uint8_t* images;
  const SampleGeom* geom;
  const int64_t* partner;  // [B] or nullptr
  const int32_t* mix;      // [B, 4] or nullptr
  int64_t B, Hmax, Wmax;
  int32_t S;
  bool antialias, channels_last;
  float scale[3], shift[3];
  void* out;  // [B, 3, S, S] in the output dtype, NCHW or channels_last
};

template <typename out_t>
__global__ void crop_kernel(PixelArgs p) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t plane = int64_t(p.S) * p.S;
  if (idx >= p.B * plane) return;
  const int64_t b = idx / plane;
  const int32_t y = int32_t((idx % plane) / p.S), x = int32_t(idx % p.S);
  int64_t q = b;
  if (p.partner != nullptr) {
    const int32_t* m = p.mix + 4 * b;
    if (y >= m[0] && y < m[2] && x >= m[1] && x < m[3]) q = clamp_index(p.partner[b], p.B);
  }
  const SampleGeom g = p.geom[q];
  const AxisSpan<float> sy = make_span<float>(g.h, p.S, y, p.antialias);
  const AxisSpan<float> sx = make_span<float>(g.w, p.S, g.flip ? p.S - 1 - x : x, p.antialias);
  const int64_t stride = p.Wmax * 3;
  const uint8_t* origin = p.images + int64_t(g.img) * p.Hmax * stride + int64_t(g.top + sy.start) * stride +
                          int64_t(g.left + sx.start) * 3;
  float a0 = 0.f, a1 = 0.f, a2 = 0.f;
  for (int32_t j = 0; j < sy.count; ++j) {
    const float wy = sy.weight(j);
    const uint8_t* r = origin + j * stride;
    float r0 = 0.f, r1 = 0.f, r2 = 0.f;
    for (int32_t i = 0; i < sx.count; ++i) {
      const float wx = sx.weight(i);
      r0 += wx * float(__ldg(r + 3 * i));
      r1 += wx * float(__ldg(r + 3 * i + 1));
      r2 += wx * float(__ldg(r + 3 * i + 2));
    }
    a0 += wy * r0;
    a1 += wy * r1;
    a2 += wy * r2;
  }
  const float v[3] = {a0 * p.scale[0] + p.shift[0], a1 * p.scale[1] + p.shift[1], a2 * p.scale[2] + p.shift[2]};
  out_t* out = static_cast<out_t*>(p.out);
  if (p.channels_last) {
    out_t* d = out + idx * 3;  // [B, S, S, 3] physically
    d[0] = out_t(v[0]);
    d[1] = out_t(v[1]);
    d[2] = out_t(v[2]);
  } else {
    out_t* d = out + b * 3 * plane + (idx - b * plane);
    d[0] = out_t(v[0]);
    d[plane] = out_t(v[1]);
    d[2 * plane] = out_t(v[2]);
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

  PixelArgs p{};
  p.images = a.images.data_ptr<uint8_t>();
  p.geom = geom;
  p.partner = a.mix_partner.defined() ? a.mix_partner.data_ptr<int64_t>() : nullptr;
  p.mix = a.mix_boxes.defined() ? a.mix_boxes.data_ptr<int32_t>() : nullptr;
  p.B = a.B;
  p.Hmax = a.Hmax;
  p.Wmax = a.Wmax;
  p.S = int32_t(a.S);
  p.antialias = a.antialias;
  p.channels_last = a.channels_last;
  for (int c = 0; c < 3; ++c) {
    p.scale[c] = a.scale[c];
    p.shift[c] = a.shift[c];
  }
  p.out = o.crops.data_ptr();
  const int64_t pblocks = (a.B * a.S * a.S + kBlock - 1) / kBlock;
  switch (a.out_dtype) {
    case at::kFloat: crop_kernel<float><<<pblocks, kBlock, 0, stream>>>(p); break;
    case at::kHalf: crop_kernel<c10::Half><<<pblocks, kBlock, 0, stream>>>(p); break;
    default: crop_kernel<c10::BFloat16><<<pblocks, kBlock, 0, stream>>>(p); break;
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
