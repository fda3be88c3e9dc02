// CUDA kernels of the label codec.
//
// Encode: one warp per row. Top-k layout: each lane keeps a sorted top-k list of its strided share of
// the row (local memory; almost every element leaves it after one compare), then k rounds of a warp
// argmax over the lanes' list heads merge them, with the same (value desc, id asc) order as the CPU
// kernel. Full-width layout (no ids): a warp maximum, and every class's code in class order.
// For logits a second warp pass over the row sums exp((z - max) / T). Everything is computed in the
// accumulation type (double for float64 scores), scaled by the same 1/T as the CPU kernel.
// Dense decode: one block per row writes the "other" value everywhere, then the k stored entries.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "../label_codec.h"

namespace hald {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFull = 0xffffffffu;

template <typename acc_t>
__device__ __forceinline__ acc_t warp_max(acc_t v) {
  for (int off = 16; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(kFull, v, off));
  return v;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

// ids == nullptr: full width (codes [N, C] in class order); else top-k (ids, codes [N, k]).
template <typename scalar_t, typename id_t, typename code_t>
__global__ void encode_kernel(const scalar_t* __restrict__ scores, const float* __restrict__ thr, int32_t n_thr,
                              id_t* __restrict__ ids, code_t* __restrict__ codes, int64_t N, int64_t C, int k,
                              std::conditional_t<std::is_same_v<scalar_t, double>, double, float> invT,
                              bool from_logits, int32_t* __restrict__ status) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int lane = threadIdx.x & 31;
  const int64_t warp = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t n_warps = int64_t(gridDim.x) * kWarpsPerBlock;
  const bool full = ids == nullptr;
  TopkList<acc_t> top;
  for (int64_t r = warp; r < N; r += n_warps) {
    const scalar_t* row = scores + r * C;
    top.reset(k);
    int32_t bad = 0;
    acc_t row_sum = 0;
    acc_t vmax = -INFINITY;
    for (int64_t c = lane; c < C; c += 32) {
      const acc_t x = acc_t(row[c]);
      bad |= score_status(x, from_logits);
      row_sum += x;
      if (full) {
        vmax = max(vmax, x);
      } else {
        top.offer(x, int32_t(c));
      }
    }
    if (!from_logits) {
      row_sum = warp_sum(row_sum);
      if (lane == 0 && fabs(double(row_sum) - 1.0) > kRowSumTolerance) bad |= kBadRowSum;
    }
    if (bad) atomicOr(status, bad);
    // Top-k merge: k rounds of an argmax over the lanes' heads (a butterfly, so every lane sees the
    // winner); the lane holding the winner pops it, and lane j % 32 keeps entry j for the write-out.
    acc_t mine_v[kMaxEncodeK / 32];
    int32_t mine_id[kMaxEncodeK / 32];
    if (full) {
      vmax = warp_max(vmax);
    } else {
      int head = 0;
      for (int j = 0; j < k; ++j) {
        int has = head < top.n;
        acc_t v = has ? top.v[head] : acc_t(0);
        int32_t id = has ? top.id[head] : 0;
        for (int off = 16; off > 0; off >>= 1) {
          const acc_t ov = __shfl_xor_sync(kFull, v, off);
          const int32_t oid = __shfl_xor_sync(kFull, id, off);
          const int ohas = __shfl_xor_sync(kFull, has, off);
          if (ohas && (!has || ranks_before(ov, oid, v, id))) {
            v = ov;
            id = oid;
            has = 1;
          }
        }
        if (head < top.n && top.id[head] == id) ++head;  // ids are unique: exactly one lane pops
        if (j == 0) vmax = v;
        if ((j & 31) == lane) {
          mine_v[j >> 5] = v;
          mine_id[j >> 5] = id;
        }
      }
    }
    acc_t norm = 1;  // probabilities: as given
    if (from_logits) {
      acc_t s = 0;
      for (int64_t c = lane; c < C; c += 32) s += exp((acc_t(row[c]) - vmax) * invT);
      norm = acc_t(1) / warp_sum(s);
    }
    const auto code_of = [&](acc_t x) {
      const acc_t p = from_logits ? exp((x - vmax) * invT) * norm : x;
      return code_t(encode_code(float(p), thr, n_thr));
    };
    if (full) {
      for (int64_t c = lane; c < C; c += 32) codes[r * C + c] = code_of(acc_t(row[c]));
    } else {
      for (int t = 0; t < kMaxEncodeK / 32; ++t) {
        const int j = lane + 32 * t;
        if (j >= k) break;
        ids[r * k + j] = id_t(mine_id[t]);
        codes[r * k + j] = code_of(mine_v[t]);
      }
    }
  }
}

// ids == nullptr: a full-width label (k == C) in class order.
__global__ void decode_dense_kernel(const int32_t* __restrict__ ids, const int32_t* __restrict__ codes,
                                    const float* __restrict__ cb, float* __restrict__ out, int64_t C, int64_t k,
                                    int32_t decode) {
  const int64_t r = blockIdx.x;
  float sp = 0;  // every thread sums the k entries in the same order: the same value everywhere
  for (int64_t j = 0; j < k; ++j) sp += cb[codes[r * k + j]];
  const DenseDecodeRow d = dense_decode_row(sp, C, k, decode);
  float* q = out + r * C;
  if (ids == nullptr) {  // full width: every class is stored, in class order (k == C)
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) q[c] = d.scale * cb[codes[r * k + c]];
    return;
  }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) q[c] = d.other;
  __syncthreads();
  if (threadIdx.x == 0) {  // in order, so a repeated id decodes the same on every run
    for (int64_t j = 0; j < k; ++j) q[ids[r * k + j]] = d.scale * cb[codes[r * k + j]];
  }
}

template <typename scalar_t, typename id_t, typename code_t>
void launch_encode(EncodeArgs& a) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t blocks = std::min<int64_t>((a.N + kWarpsPerBlock - 1) / kWarpsPerBlock, 65535 * 8);
  encode_kernel<scalar_t, id_t, code_t><<<blocks, 32 * kWarpsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
      a.scores.const_data_ptr<scalar_t>(), a.thresholds.const_data_ptr<float>(), int32_t(a.thresholds.size(0)),
      a.full_width() ? nullptr : a.ids.data_ptr<id_t>(), a.codes.data_ptr<code_t>(), a.N, a.C,
      a.full_width() ? 1 : int(a.k), acc_t(a.inv_temperature), a.from_logits, a.status.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void encode_dispatch_outputs(EncodeArgs& a) {
  const bool ids16 = a.C <= 65535;  // the id dtype, also for full width (no ids: one instantiation fewer)
  const bool codes8 = a.codes.scalar_type() == at::kByte;
  if (ids16 && codes8) launch_encode<scalar_t, uint16_t, uint8_t>(a);
  else if (ids16) launch_encode<scalar_t, uint16_t, uint16_t>(a);
  else if (codes8) launch_encode<scalar_t, int32_t, uint8_t>(a);
  else launch_encode<scalar_t, int32_t, uint16_t>(a);
}

void label_encode_cuda_kernel(EncodeArgs& a) {
  const c10::cuda::CUDAGuard guard(a.scores.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scores.scalar_type(), "label_encode_cuda",
                                  [&] { encode_dispatch_outputs<scalar_t>(a); });
}

void label_decode_dense_cuda_kernel(DenseDecodeArgs& a) {
  const c10::cuda::CUDAGuard guard(a.out.device());
  TORCH_CHECK(a.N <= int64_t(INT32_MAX), "label_decode_dense: too many rows for one launch");
  decode_dense_kernel<<<unsigned(a.N), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      a.ids.defined() ? a.ids.const_data_ptr<int32_t>() : nullptr, a.codes.const_data_ptr<int32_t>(),
      a.codebook.const_data_ptr<float>(), a.out.data_ptr<float>(), a.C, a.k, a.decode);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace hald

TORCH_LIBRARY_IMPL(hald, CUDA, m) {
  HALD_IMPL_BOXED(m, "label_encode", hald::LabelEncodeArgs, hald::label_encode_with<&hald::label_encode_cuda_kernel>);
  HALD_IMPL_BOXED(m, "label_decode", hald::LabelDecodeArgs, hald::label_decode);
  HALD_IMPL_BOXED(m, "label_decode_dense", hald::LabelDecodeDenseArgs,
                  hald::label_decode_dense_with<&hald::label_decode_dense_cuda_kernel>);
}
