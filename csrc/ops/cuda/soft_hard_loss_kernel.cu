// CUDA kernel of the fused soft-KL / hard-CE loss.
//
// TPR threads own one logits row (a warp for C <= 2048, a 256-thread block above). Per row:
//   pass 1: one streaming read with 16-byte loads and an online max / sum-exp for z and z/T;
//   the k stored entries and the hard targets are gathered and reduced; every thread then runs the
//   shared finish_row() on the reduced sums;
//   the full fp32 gradient at the special classes (stored ids, y_a, y_b) goes to a small scratch
//   row [k + 2], before anything is overwritten (the in-place variant writes into logits);
//   pass 2: re-read (from L2), write the gradient; then the special classes are written from scratch,
//   so each gradient value is rounded to the logits dtype exactly once.
// Dense soft targets (probabilities / codes [B, C], or the teacher's logits with their own
// temperature) are reduced in an extra streaming pass over the target row and added to the bulk
// gradient in pass 2 (the teacher's softmax recomputed there, never stored).
// Bad input cannot be reported without a host sync: a row with an out-of-range id or target, a
// repeated id, a lambda outside [0, 1], a negative or non-finite target value or teacher logit, or a
// dense row that does not sum to one under "marginal" is poisoned: its loss and its whole gradient
// row are NaN (so an optimiser or a gradient scaler that looks only at gradients sees it too); the
// kernel never reads or writes out of bounds. The CPU kernel raises instead.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "../soft_hard_loss.h"

namespace hald {
namespace {

constexpr int kBlock = 256;
constexpr unsigned kFull = 0xffffffffu;

struct KernelArgs {
  LossParams P;
  const void* logits;
  int64_t lstride;
  void* grad;  // may alias logits
  int64_t gstride;
  void* loss;
  const void* ids;
  const void* vals;
  const float* codebook;
  const int64_t* ta;
  const int64_t* tb;
  const void* lam;
  const int64_t* hard_count;  // "mean": rows not ignored (device scalar)
  void* scratch;              // acc_t [B, scr_w]: gradient at the stored ids (top-k only), y_a, y_b
  int64_t scr_w;
  int64_t B;
  int32_t id_kind, val_kind;
  bool compute_grad;
};

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// VEC consecutive logits as acc_t (one 16-byte load when VEC > 1).
template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_chunk(const scalar_t* p, acc_t (&v)[VEC]) {
  if constexpr (VEC > 1) {
    const Pack<scalar_t, VEC> pk = *reinterpret_cast<const Pack<scalar_t, VEC>*>(p);
#pragma unroll
    for (int t = 0; t < VEC; ++t) v[t] = acc_t(pk.v[t]);
  } else {
    v[0] = acc_t(p[0]);
  }
}

template <int TPR>
__device__ __forceinline__ void row_barrier() {
  if constexpr (TPR == 32) {
    __syncwarp();
  } else {
    __syncthreads();
  }
}

// Sum of N values over the TPR threads of a row; every thread gets the result.
template <int TPR, int N, typename acc_t>
__device__ __forceinline__ void row_sum(acc_t (&v)[N], acc_t (*smem)[8]) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int n = 0; n < N; ++n) v[n] += __shfl_xor_sync(kFull, v[n], o);
  if constexpr (TPR > 32) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0)
#pragma unroll
      for (int n = 0; n < N; ++n) smem[warp][n] = v[n];
    __syncthreads();
#pragma unroll
    for (int n = 0; n < N; ++n) {
      acc_t t = 0;
#pragma unroll
      for (int w = 0; w < TPR / 32; ++w) t += smem[w][n];
      v[n] = t;
    }
  }
}

template <int TPR, typename acc_t>
__device__ __forceinline__ acc_t row_max(acc_t v, acc_t (*smem)[8]) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFull, v, o));
  if constexpr (TPR > 32) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) smem[warp][0] = v;
    __syncthreads();
    v = smem[0][0];
#pragma unroll
    for (int w = 1; w < TPR / 32; ++w) v = max(v, smem[w][0]);
  }
  return v;
}

template <typename acc_t>
__device__ __forceinline__ acc_t dexp(acc_t x) {
  return ::exp(x);
}
template <>
__device__ __forceinline__ float dexp<float>(float x) {
  return __expf(x);
}

template <typename scalar_t, typename acc_t, int TPR, int VEC>
__global__ void __launch_bounds__(kBlock) soft_hard_kernel(KernelArgs ka) {
  constexpr int ROWS = kBlock / TPR;
  __shared__ acc_t smem[8][8];
  const LossParams& P = ka.P;
  const int lane = threadIdx.x % TPR;
  const int64_t b = int64_t(blockIdx.x) * ROWS + threadIdx.x / TPR;
  if (b >= ka.B) return;  // a whole row group (a warp, or the whole block) leaves together

  const int64_t C = P.C, k = P.k;
  const scalar_t* row = static_cast<const scalar_t*>(ka.logits) + b * ka.lstride;
  const acc_t invT = acc_t(1) / acc_t(P.temperature);

  // Hard target of this row (every thread reads the same few values).
  bool hard_valid = false, bad = false;
  int64_t ya = 0, yb = 0;
  acc_t lam = 1;
  if (P.has_hard) {
    ya = ka.ta[b];
    hard_valid = ya != P.ignore_index;
    if (hard_valid) {
      yb = ya;
      if (P.has_pair) {
        yb = ka.tb[b];
        lam = static_cast<const acc_t*>(ka.lam)[b];
      }
      if (ya < 0 || ya >= C || yb < 0 || yb >= C || !(lam >= acc_t(0) && lam <= acc_t(1))) {
        bad = true;
        hard_valid = false;
      }
    }
  }
  const bool useT = P.has_soft, use1 = hard_valid;

  // Pass 1: online max and sums of exp for z and z/T, plus sum z.
  acc_t m = -std::numeric_limits<acc_t>::infinity(), s1 = 0, sT = 0, sumz = 0;
  for (int64_t i0 = int64_t(lane) * VEC; i0 < C; i0 += int64_t(TPR) * VEC) {
    acc_t v[VEC];
    load_chunk<VEC>(row + i0, v);
    acc_t cm = v[0];
#pragma unroll
    for (int t = 1; t < VEC; ++t) cm = max(cm, v[t]);
    if (cm > m) {
      const acc_t d = m - cm;  // -inf on the first chunk: the sums are 0 then anyway
      s1 *= dexp(d);
      sT *= dexp(d * invT);
      m = cm;
    }
#pragma unroll
    for (int t = 0; t < VEC; ++t) sumz += v[t];
    if (m == -std::numeric_limits<acc_t>::infinity()) continue;  // masked (-inf) logits add nothing
#pragma unroll
    for (int t = 0; t < VEC; ++t) {
      const acc_t d = v[t] - m;
      if (use1) s1 += dexp(d);
      if (useT) sT += dexp(d * invT);
    }
  }
  RowStats<acc_t> st;
  st.m = row_max<TPR>(m, smem);
  {
    const acc_t d = m - st.m;
    const acc_t f1 = m == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : dexp(d);
    const acc_t fT = m == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : dexp(d * invT);
    acc_t red[3] = {s1 * f1, sT * fT, sumz};
    row_sum<TPR>(red, smem);
    st.s1 = use1 ? red[0] : acc_t(1);
    st.sT = useT ? red[1] : acc_t(1);
    st.sumz = red[2];
  }

  // Soft target: gather and reduce. Invalid entries are skipped and poison the row.
  TopkSums<acc_t> tk;
  const bool dense = P.has_soft && dense_soft(P);
  const bool teacher = P.soft_kind == int32_t(SoftKind::Teacher);
  const acc_t invTt = acc_t(1) / acc_t(P.teacher_temperature);
  acc_t mt = 0, dense_scale = 1;  // teacher: max t; q = dense_scale * w (see dense_weight)
  if (P.has_soft && !dense) {
    acc_t red[5] = {0, 0, 0, 0, 0};
    for (int64_t j = lane; j < k; j += TPR) {
      const int64_t c = load_id(ka.ids, ka.id_kind, b * k + j);
      const acc_t p = load_value<acc_t>(ka.vals, ka.val_kind, b * k + j, ka.codebook);
      bool ok = c >= 0 && c < C && p >= acc_t(0) && !isinf(p);
      // Distinct ids: each entry compares with the ones before it (k^2 / 2 compares per row).
      for (int64_t t = 0; ok && t < j; ++t) ok = load_id(ka.ids, ka.id_kind, b * k + t) != c;
      if (!ok) {
        red[4] += 1;
        continue;
      }
      const acc_t z = acc_t(row[c]);
      red[0] += p;
      red[1] += p * z;
      red[2] += z;
      red[3] += xlogx(p);
    }
    row_sum<TPR>(red, smem);
    tk.sp = red[0];
    tk.spz = red[1];
    tk.sz = red[2];
    tk.splogp = red[3];
    bad = bad || red[4] > acc_t(0);
  } else if (dense && teacher) {
    acc_t m_t = -std::numeric_limits<acc_t>::infinity(), nonfinite = 0;
    for (int64_t i = lane; i < C; i += TPR) {
      const acc_t t = load_value<acc_t>(ka.vals, ka.val_kind, b * C + i, nullptr);
      nonfinite += (isnan(t) || isinf(t)) ? acc_t(1) : acc_t(0);
      m_t = max(m_t, t);
    }
    mt = row_max<TPR>(m_t, smem);
    acc_t red[4] = {0, 0, 0, nonfinite};
    for (int64_t i = lane; i < C; i += TPR) {
      const acc_t d = (load_value<acc_t>(ka.vals, ka.val_kind, b * C + i, nullptr) - mt) * invTt;
      const acc_t e = dexp(d);
      red[0] += e;
      red[1] += e * acc_t(row[i]);
      red[2] += e * d;
    }
    row_sum<TPR>(red, smem);
    bad = bad || red[3] > acc_t(0) || isinf(mt);
    tk.sp = 1;
    tk.spz = red[1] / red[0];
    tk.sz = st.sumz;
    tk.splogp = red[2] / red[0] - ::log(red[0]);
    dense_scale = acc_t(1) / red[0];
  } else if (dense) {
    acc_t red[4] = {0, 0, 0, 0};
    for (int64_t i = lane; i < C; i += TPR) {
      const acc_t p = load_value<acc_t>(ka.vals, ka.val_kind, b * C + i, ka.codebook);
      if (!(p >= acc_t(0)) || isinf(p)) {
        red[3] += 1;
        continue;
      }
      red[0] += p;
      red[1] += p * acc_t(row[i]);
      red[2] += xlogx(p);
    }
    row_sum<TPR>(red, smem);
    tk.sp = red[0];
    tk.spz = red[1];
    tk.sz = st.sumz;
    tk.splogp = red[2];
    bad = bad || red[3] > acc_t(0) ||
          (P.decode == int32_t(Decode::Marginal) && !(::fabs(double(red[0]) - 1.0) <= kDenseSumTolerance));
  }

  acc_t hard_scale = acc_t(P.hard_weight) * acc_t(P.hard_red);
  if (P.has_hard && P.hard_mean) {
    const int64_t n = *ka.hard_count;
    hard_scale = acc_t(P.hard_weight) / acc_t(n > 0 ? n : 1);
  }
  const acc_t z_a = hard_valid ? acc_t(row[ya]) : acc_t(0);
  const acc_t z_b = hard_valid ? acc_t(row[yb]) : acc_t(0);
  const RowCoeffs<acc_t> r = finish_row<acc_t>(P, st, tk, hard_valid, hard_scale, z_a, z_b, lam);
  if (lane == 0) {
    static_cast<acc_t*>(ka.loss)[b] = bad ? std::numeric_limits<acc_t>::quiet_NaN() : r.loss;
  }
  if (!ka.compute_grad) return;
  // Dense soft term of the gradient at class i: dcoef * w_i.
  const acc_t dcoef = r.soft_corr * r.q_scale * dense_scale;
  auto dense_weight = [&](int64_t i) -> acc_t {
    const acc_t v = load_value<acc_t>(ka.vals, ka.val_kind, b * C + i, ka.codebook);
    return teacher ? dexp((v - mt) * invTt) : v;
  };

  // Full-precision gradient at the special classes, into scratch (read before any write).
  acc_t* scr = static_cast<acc_t*>(ka.scratch) + b * ka.scr_w;
  const int64_t kt = P.has_soft && !dense ? k : 0;  // stored ids with their own scratch entry
  bool a_in_top = false, b_in_top = false;
  if (!bad) {
    for (int64_t j = lane; j < kt; j += TPR) {
      const int64_t c = load_id(ka.ids, ka.id_kind, b * k + j);
      const acc_t p = load_value<acc_t>(ka.vals, ka.val_kind, b * k + j, ka.codebook);
      acc_t g = bulk_grad(r, st, acc_t(row[c]), invT) + r.soft_corr * (r.q_scale * p - r.u);
      if (hard_valid && c == ya) {
        g += r.corr_a;
        a_in_top = true;
      }
      if (hard_valid && c == yb) {
        g += r.corr_b;
        b_in_top = true;
      }
      scr[j] = g;
    }
  }
  // Did any thread of the row find y_a / y_b among the stored ids?
  {
    acc_t red[2] = {acc_t(a_in_top), acc_t(b_in_top)};
    if (kt > 0 && hard_valid && !bad) row_sum<TPR>(red, smem);
    a_in_top = red[0] > acc_t(0);
    b_in_top = red[1] > acc_t(0);
  }
  if (lane == 0 && hard_valid && !bad) {
    const acc_t da = dense ? dcoef * dense_weight(ya) : acc_t(0);
    const acc_t db = dense ? dcoef * dense_weight(yb) : acc_t(0);
    scr[kt] = bulk_grad(r, st, z_a, invT) + da + r.corr_a + (ya == yb ? r.corr_b : acc_t(0));
    scr[kt + 1] = bulk_grad(r, st, z_b, invT) + db + r.corr_b;
  }
  row_barrier<TPR>();  // every gather of this row is done before the row is overwritten

  // Pass 2: bulk gradient.
  scalar_t* grow = static_cast<scalar_t*>(ka.grad) + b * ka.gstride;
  for (int64_t i0 = int64_t(lane) * VEC; i0 < C; i0 += int64_t(TPR) * VEC) {
    acc_t v[VEC];
    load_chunk<VEC>(row + i0, v);
    Pack<scalar_t, VEC> out;
#pragma unroll
    for (int t = 0; t < VEC; ++t) {
      const acc_t d = v[t] - st.m;
      acc_t g = r.base;
      if (useT) g += r.sa * dexp(d * invT);
      if (use1) g += r.ha * dexp(d);
      if (dense) g += dcoef * dense_weight(i0 + t);
      out.v[t] = scalar_t(bad ? std::numeric_limits<acc_t>::quiet_NaN() : g);
    }
    if constexpr (VEC > 1) {
      *reinterpret_cast<Pack<scalar_t, VEC>*>(grow + i0) = out;
    } else {
      grow[i0] = out.v[0];
    }
  }
  row_barrier<TPR>();

  // Special classes, each written once from its acc_t value.
  if (bad) return;
  for (int64_t j = lane; j < kt; j += TPR) {
    grow[load_id(ka.ids, ka.id_kind, b * k + j)] = scalar_t(scr[j]);
  }
  if (lane == 0 && hard_valid) {
    if (!a_in_top) grow[ya] = scalar_t(scr[kt]);
    if (!b_in_top && yb != ya) grow[yb] = scalar_t(scr[kt + 1]);
  }
}

template <typename scalar_t, typename acc_t, int TPR>
void launch_tpr(const KernelArgs& ka, cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  const bool aligned = ka.P.C % VEC == 0 && ka.lstride % VEC == 0 && (!ka.compute_grad || ka.gstride % VEC == 0) &&
                       reinterpret_cast<uintptr_t>(ka.logits) % 16 == 0 &&
                       (!ka.compute_grad || reinterpret_cast<uintptr_t>(ka.grad) % 16 == 0);
  const int64_t rows_per_block = kBlock / TPR;
  const dim3 grid(unsigned((ka.B + rows_per_block - 1) / rows_per_block));
  if (aligned) {
    soft_hard_kernel<scalar_t, acc_t, TPR, VEC><<<grid, kBlock, 0, stream>>>(ka);
  } else {
    soft_hard_kernel<scalar_t, acc_t, TPR, 1><<<grid, kBlock, 0, stream>>>(ka);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void soft_hard_loss_cuda_kernel(const SoftHardArgs& a, at::Tensor& loss_rows, at::Tensor& grad) {
  if (a.B == 0) return;
  TORCH_CHECK(a.B <= int64_t(65535) * 65535, "soft_hard_loss: batch too large");
  const c10::cuda::CUDAGuard guard(a.logits.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(a.logits.device().index()).stream();
  KernelArgs ka;
  ka.P = a.P;
  ka.logits = a.logits.const_data_ptr();
  ka.lstride = a.logits.stride(0);
  ka.compute_grad = a.compute_grad;
  ka.grad = a.compute_grad ? grad.data_ptr() : nullptr;
  ka.gstride = a.compute_grad ? grad.stride(0) : 0;
  ka.loss = loss_rows.data_ptr();
  ka.ids = a.ids.defined() ? a.ids.const_data_ptr() : nullptr;
  ka.vals = a.values.defined() ? a.values.const_data_ptr() : nullptr;
  ka.codebook = a.codebook.defined() ? a.codebook.const_data_ptr<float>() : nullptr;
  ka.ta = a.target_a.defined() ? a.target_a.const_data_ptr<int64_t>() : nullptr;
  ka.tb = a.target_b.defined() ? a.target_b.const_data_ptr<int64_t>() : nullptr;
  ka.lam = a.lam.defined() ? a.lam.const_data_ptr() : nullptr;
  ka.B = a.B;
  ka.id_kind = a.id_kind;
  ka.val_kind = a.val_kind;
  at::Tensor count;
  if (a.P.has_hard && a.P.hard_mean) {
    count = a.target_a.ne(a.P.ignore_index).sum();  // stays on the device: no host sync
    ka.hard_count = count.const_data_ptr<int64_t>();
  } else {
    ka.hard_count = nullptr;
  }
  // Scratch in the accumulation type (double for float64 logits): the special classes' gradient
  // keeps the precision the CPU kernel has.
  at::Tensor scratch;
  ka.scr_w = (a.P.has_soft && !dense_soft(a.P) ? a.P.k : 0) + 2;
  ka.scratch = nullptr;
  if (a.compute_grad) {
    const auto acc_dtype = a.logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    scratch = at::empty({a.B, ka.scr_w}, a.logits.options().dtype(acc_dtype));
    ka.scratch = scratch.data_ptr();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.logits.scalar_type(), "soft_hard_loss_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    if (a.P.C <= 2048) {
      launch_tpr<scalar_t, acc_t, 32>(ka, stream);
    } else {
      launch_tpr<scalar_t, acc_t, 256>(ka, stream);
    }
  });
}

}  // namespace hald

HALD_REGISTER_SOFT_HARD(CUDA, hald::soft_hard_loss_cuda_kernel)
