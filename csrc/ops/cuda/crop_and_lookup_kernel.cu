// CUDA kernel of the fused crop op.
//
// Kernel 1 (one thread per sample): the pixel box (replayed from fractions or drawn with the shared
// counter-based RNG, so fresh crops equal the CPU kernel's) and the flip.
// Kernel 2 (one thread per output pixel, all three channels): taps of both axes computed on the fly
// from the shared crop math (antialiased triangle filter or plain bilinear), a 2-D weighted sum of the
// uint8 source (read through the read-only cache), then flip + normalise + store in the out dtype and
// layout. Ids, slots and boxes were validated on the host before the launch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdint>

#include "../crop_and_lookup.h"

namespace hald {
namespace {

constexpr int kBlock = 256;

struct DevArgs {
  const uint8_t* images;
  const int64_t* ids;
  const float* boxes;   // replay or nullptr
  const uint8_t* flips; // replay or nullptr
  int32_t* pix;
  uint8_t* flips_used;
  int64_t H, W, B, S;
  int64_t seed, step;
  crop::RrcParams rrc;
  float mul[3], add[3];
  bool aa, nhwc;
};

__global__ void boxes_kernel(DevArgs a) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= a.B) return;
  crop::PixBox p;
  bool f;
  if (a.boxes != nullptr) {
    const float* bx = a.boxes + 4 * b;
    p = crop::box_to_pixels(bx[0], bx[1], bx[2], bx[3], a.H, a.W);
    f = a.flips[b] != 0;
  } else {
    crop::Rng rng = crop::make_rng(a.seed, a.step, b, crop::kPurposeBox);
    p = crop::sample_rrc(rng, a.H, a.W, a.rrc);
    f = crop::sample_flip(a.seed, a.step, b, a.rrc.flip_prob);
  }
  a.pix[4 * b] = p.top;
  a.pix[4 * b + 1] = p.left;
  a.pix[4 * b + 2] = p.h;
  a.pix[4 * b + 3] = p.w;
  a.flips_used[b] = f ? 1 : 0;
}

template <typename T>
__device__ __forceinline__ T to_out(float v);
template <>
__device__ __forceinline__ float to_out<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 to_out<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half to_out<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__global__ void resample_kernel(DevArgs a, T* __restrict__ out) {
  const int64_t S = a.S;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.B * S * S) return;
  const int64_t b = idx / (S * S);
  const int64_t rem = idx - b * S * S;
  const int64_t oy = rem / S, ox = rem - oy * S;
  const int32_t top = a.pix[4 * b], left = a.pix[4 * b + 1], ch = a.pix[4 * b + 2], cw = a.pix[4 * b + 3];
  const bool flip = a.flips_used[b] != 0;
  const int64_t sx = flip ? S - 1 - ox : ox;  // flip after resizing: output column ox reads column S-1-ox
  const crop::Axis ay = crop::make_axis(ch, S, a.aa), axx = crop::make_axis(cw, S, a.aa);
  const crop::Taps ty = crop::make_taps(ay, oy), tx = crop::make_taps(axx, sx);
  const uint8_t* img = a.images + ((a.ids[b] * a.H + top + ty.start) * a.W + left + tx.start) * 3;
  float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f;
  for (int32_t i = 0; i < ty.n; ++i) {
    const float wy = crop::tap_weight(ay, ty, i);
    const uint8_t* row = img + int64_t(i) * a.W * 3;
    float r0 = 0.f, r1 = 0.f, r2 = 0.f;
    for (int32_t j = 0; j < tx.n; ++j) {
      const float wx = crop::tap_weight(axx, tx, j);
      r0 += wx * float(__ldg(row + 3 * j));
      r1 += wx * float(__ldg(row + 3 * j + 1));
      r2 += wx * float(__ldg(row + 3 * j + 2));
    }
    acc0 += wy * r0;
    acc1 += wy * r1;
    acc2 += wy * r2;
  }
  const float v0 = acc0 * a.mul[0] + a.add[0], v1 = acc1 * a.mul[1] + a.add[1], v2 = acc2 * a.mul[2] + a.add[2];
  if (a.nhwc) {
    T* dst = out + ((b * S + oy) * S + ox) * 3;
    dst[0] = to_out<T>(v0);
    dst[1] = to_out<T>(v1);
    dst[2] = to_out<T>(v2);
  } else {
    T* dst = out + b * 3 * S * S + oy * S + ox;
    dst[0] = to_out<T>(v0);
    dst[S * S] = to_out<T>(v1);
    dst[2 * S * S] = to_out<T>(v2);
  }
}

}  // namespace

void crop_cuda_kernel(const CropArgs& a, at::Tensor& pix, at::Tensor& flips_used, at::Tensor& out) {
  c10::cuda::CUDAGuard guard(a.images.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  DevArgs d;
  d.images = a.images.data_ptr<uint8_t>();
  d.ids = a.ids.data_ptr<int64_t>();
  d.boxes = a.boxes.defined() ? a.boxes.data_ptr<float>() : nullptr;
  d.flips = a.flips.defined() ? a.flips.data_ptr<uint8_t>() : nullptr;
  d.pix = pix.data_ptr<int32_t>();
  d.flips_used = flips_used.data_ptr<uint8_t>();
  d.H = a.H, d.W = a.W, d.B = a.B, d.S = a.S;
  d.seed = a.seed, d.step = a.step;
  d.rrc = a.rrc;
  for (int c = 0; c < 3; ++c) d.mul[c] = a.mul[c], d.add[c] = a.add[c];
  d.aa = a.antialias;
  d.nhwc = a.channels_last;
  boxes_kernel<<<unsigned((a.B + 127) / 128), 128, 0, stream>>>(d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t total = a.B * a.S * a.S;
  const dim3 grid(unsigned((total + kBlock - 1) / kBlock));
  switch (out.scalar_type()) {
    case at::kFloat: resample_kernel<float><<<grid, kBlock, 0, stream>>>(d, out.data_ptr<float>()); break;
    case at::kBFloat16:
      resample_kernel<__nv_bfloat16><<<grid, kBlock, 0, stream>>>(
          d, reinterpret_cast<__nv_bfloat16*>(out.data_ptr<at::BFloat16>()));
      break;
    case at::kHalf:
      resample_kernel<__half><<<grid, kBlock, 0, stream>>>(d, reinterpret_cast<__half*>(out.data_ptr<at::Half>()));
      break;
    default: TORCH_CHECK(false, "crop_and_lookup: unsupported out dtype ", out.scalar_type());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

HALD_REGISTER_CROP(CUDA, crop_cuda_kernel)

}  // namespace hald
