// CUDA kernel of the fused soft-KL / hard-CE loss.
//
// TPR threads own one logits row (TPR = 32, 128 or 256; several rows per block below 256). The
// host picks the smallest TPR whose threads hold the whole row in registers (NV vectors of 16 bytes
// each per thread), then a larger one while the batch alone would leave the GPU idle (B = 1024,
// C = 1000 runs 128 threads per row). Per row:
//   pass 1: one streaming read of the logits (and of a dense target / the teacher's logits beside
//           them), peeled to 16-byte alignment (scalar head, vector body, scalar tail: every C and
//           row stride vectorises), with online max / sum-exp for z and z/T and, for a teacher, a
//           second online softmax of t / T_t. The k stored entries are gathered and checked for
//           repeats in O(k) with a bitmap of the row's classes in shared memory. All row sums are
//           reduced across threads in double, and the row is finished in double (finish_row).
//   pass 2: the bulk gradient from the values still in registers (the part of a row too long to
//           hold is re-read, from L2), written with the same peeling; then the few special classes (stored ids, y_a,
//           y_b) get their correction added to the written value, each by one thread.
// Memory traffic: the logits (and a dense target) read once, the gradient written once; no scratch
// in global memory.
// Bad input cannot be reported without a host sync: a row with an out-of-range id or target, a
// repeated id, a lambda outside [0, 1], a negative or non-finite target value, a NaN or +inf teacher
// logit (-inf masks a class), or a dense row that does not sum to one under "marginal" is poisoned:
// its loss and its whole gradient row are NaN (so an optimiser or a gradient scaler that looks only
// at gradients sees it too); the kernel never reads or writes out of bounds. The CPU kernel raises.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "../soft_hard_loss.h"

namespace hald {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int SMEM_W = 8;  // values per cross-warp reduction

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
  int64_t B;
  int32_t bitmap_words;       // per row (0: no stored ids)
  int32_t id_kind, val_kind;
  bool compute_grad;
};

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename acc_t>
__device__ __forceinline__ acc_t dexp(acc_t x) {
  return ::exp(x);
}
template <>
__device__ __forceinline__ float dexp<float>(float x) {
  return __expf(x);
}

// Synchronises the TPR threads of one row (a warp, a named barrier for a row group, or the block).
template <int TPR, int ROWS>
__device__ __forceinline__ void row_barrier(int row_in_block) {
  if constexpr (TPR == 32) {
    __syncwarp();
  } else if constexpr (ROWS == 1) {
    __syncthreads();
  } else {
    asm volatile("bar.sync %0, %1;" ::"r"(row_in_block + 1), "r"(TPR) : "memory");
  }
}

// Sum (double) of N values over the TPR threads of a row; every thread gets the result.
template <int TPR, int ROWS, int N>
__device__ __forceinline__ void row_sum(double (&v)[N], double (*smem)[SMEM_W], int row_in_block) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int n = 0; n < N; ++n) v[n] += __shfl_xor_sync(kFull, v[n], o);
  if constexpr (TPR > 32) {
    const int lane = threadIdx.x % TPR, warp = lane / 32;
    row_barrier<TPR, ROWS>(row_in_block);  // the previous use of smem is over
    if (lane % 32 == 0)
#pragma unroll
      for (int n = 0; n < N; ++n) smem[warp][n] = v[n];
    row_barrier<TPR, ROWS>(row_in_block);
#pragma unroll
    for (int n = 0; n < N; ++n) {
      double t = 0;
      for (int w = 0; w < TPR / 32; ++w) t += smem[w][n];
      v[n] = t;
    }
  }
}

// Max of N values over the row's threads.
template <int TPR, int ROWS, int N, typename acc_t>
__device__ __forceinline__ void row_max(acc_t (&v)[N], double (*smem)[SMEM_W], int row_in_block) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int n = 0; n < N; ++n) v[n] = max(v[n], __shfl_xor_sync(kFull, v[n], o));
  if constexpr (TPR > 32) {
    const int lane = threadIdx.x % TPR, warp = lane / 32;
    row_barrier<TPR, ROWS>(row_in_block);
    if (lane % 32 == 0)
#pragma unroll
      for (int n = 0; n < N; ++n) smem[warp][n] = double(v[n]);
    row_barrier<TPR, ROWS>(row_in_block);
#pragma unroll
    for (int n = 0; n < N; ++n) {
      acc_t t = acc_t(smem[0][n]);
      for (int w = 1; w < TPR / 32; ++w) t = max(t, acc_t(smem[w][n]));
      v[n] = t;
    }
  }
}

// Where a row's 16-byte vectors start: `head` scalar elements, then `nvec` vectors, then the tail.
template <typename scalar_t>
__device__ __forceinline__ int64_t head_of(const void* p, int64_t C) {
  const int64_t h = int64_t((16 - reinterpret_cast<uintptr_t>(p) % 16) % 16) / int64_t(sizeof(scalar_t));
  return h < C ? h : C;
}

// Per-thread running sums of pass 1.
template <typename acc_t>
struct Acc {
  acc_t m, s1, sT, sumz;        // logits: max, sum exp(z - m), sum exp((z - m) / T), sum z
  acc_t mt, se, sez, sed;       // teacher: max t, sum e, sum e z, sum e d (d = (t - mt) / T_t, e = exp d)
  acc_t sp, spz, splogp, bad;   // dense probabilities: sum p, sum p z, sum p log p; bad entries
};

template <typename acc_t>
__device__ __forceinline__ acc_t dense_value(const KernelArgs& ka, int64_t idx) {
  return load_value<acc_t>(ka.vals, ka.val_kind, idx, ka.codebook);
}

// Pass 1 over one chunk of N consecutive values x[0..N) at class i0.
template <int N, typename acc_t>
__device__ __forceinline__ void pass1_chunk(const KernelArgs& ka, Acc<acc_t>& a, const acc_t (&x)[N], int64_t row_off,
                                            int64_t i0, bool useT, bool use1, int kind, acc_t invT, acc_t invTt) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  acc_t cm = x[0];
#pragma unroll
  for (int t = 1; t < N; ++t) cm = max(cm, x[t]);
  if (cm > a.m) {
    if (a.m != -kInf) {
      const acc_t d = a.m - cm;
      a.s1 *= dexp(d);
      a.sT *= dexp(d * invT);
    }
    a.m = cm;
  }
#pragma unroll
  for (int t = 0; t < N; ++t) {
    a.sumz += x[t];
    if (a.m != -kInf) {
      const acc_t d = x[t] - a.m;
      if (use1) a.s1 += dexp(d);
      if (useT) a.sT += dexp(d * invT);
    }
  }
  if (kind == int32_t(SoftKind::Teacher)) {
    acc_t t[N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      t[j] = dense_value<acc_t>(ka, row_off + i0 + j);
      a.bad += (isnan(t[j]) || t[j] == kInf) ? acc_t(1) : acc_t(0);
    }
    acc_t ct = t[0];
#pragma unroll
    for (int j = 1; j < N; ++j) ct = max(ct, t[j]);
    if (ct > a.mt) {
      if (a.mt != -kInf) {
        const acc_t delta = (a.mt - ct) * invTt, f = dexp(delta);
        a.sed = f * (a.sed + delta * a.se);
        a.se *= f;
        a.sez *= f;
      }
      a.mt = ct;
    }
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const acc_t d = (t[j] - a.mt) * invTt;
      const bool live = d > -kInf;  // a -inf teacher logit (masked class) adds nothing: q = 0
      const acc_t e = live ? dexp(d) : acc_t(0);
      a.se += e;
      a.sez += e * x[j];
      a.sed += live ? e * d : acc_t(0);
    }
  } else if (kind == int32_t(SoftKind::Dense)) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const acc_t p = dense_value<acc_t>(ka, row_off + i0 + j);
      if (!(p >= acc_t(0)) || isinf(p)) {
        a.bad += 1;
        continue;
      }
      a.sp += p;
      a.spz += p * x[j];
      if (ka.P.soft_kl) a.splogp += xlogx(p);
    }
  }
}

template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void load_vec(const scalar_t* p, acc_t (&v)[VEC]) {
  const Pack<scalar_t, VEC> pk = *reinterpret_cast<const Pack<scalar_t, VEC>*>(p);
#pragma unroll
  for (int t = 0; t < VEC; ++t) v[t] = acc_t(pk.v[t]);
}

// TPR threads per row, BLOCK threads per block, NV vectors per thread held in registers.
template <typename scalar_t, typename acc_t, int TPR, int BLOCK, int NV>
__global__ void __launch_bounds__(BLOCK) soft_hard_kernel(KernelArgs ka) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  constexpr int ROWS = BLOCK / TPR;
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
  __shared__ double smem_all[ROWS][TPR / 32][SMEM_W];
  extern __shared__ uint32_t bitmap_all[];
  const LossParams& P = ka.P;
  const int lane = threadIdx.x % TPR;
  const int rib = threadIdx.x / TPR;  // row in block
  const int64_t b = int64_t(blockIdx.x) * ROWS + rib;
  if (b >= ka.B) return;  // a whole row group leaves together
  double (*smem)[SMEM_W] = smem_all[rib];
  uint32_t* bitmap = bitmap_all + int64_t(rib) * ka.bitmap_words;

  const int64_t C = P.C, k = P.k;
  const scalar_t* row = static_cast<const scalar_t*>(ka.logits) + b * ka.lstride;
  const acc_t invT = acc_t(1) / acc_t(P.temperature);
  const acc_t invTt = acc_t(1) / acc_t(P.teacher_temperature);
  const bool dense = P.has_soft && dense_soft(P);
  const int kind = dense ? P.soft_kind : -1;  // what pass 1 reads beside the logits
  const bool topk = P.has_soft && !dense && k > 0;

  // Hard target of this row (every thread reads the same few values).
  bool hard_valid = false, bad_hard = false;
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
        bad_hard = true;
        hard_valid = false;
      }
    }
  }
  const bool useT = P.has_soft, use1 = hard_valid;

  // ---- pass 1 ----
  const int64_t head = head_of<scalar_t>(row, C);
  const int64_t nvec = (C - head) / VEC;
  const int64_t tail0 = head + nvec * VEC;
  const int64_t voff = b * C;  // dense target row offset (contiguous [B, C])
  Acc<acc_t> a;
  a.m = -kInf, a.s1 = 0, a.sT = 0, a.sumz = 0;
  a.mt = -kInf, a.se = 0, a.sez = 0, a.sed = 0;
  a.sp = 0, a.spz = 0, a.splogp = 0, a.bad = 0;
  acc_t cache[NV][VEC];
  acc_t edge[2] = {0, 0};  // this thread's head and tail element
  if (lane < head) {
    acc_t x[1] = {acc_t(row[lane])};
    edge[0] = x[0];
    pass1_chunk<1>(ka, a, x, voff, lane, useT, use1, kind, invT, invTt);
  }
#pragma unroll
  for (int t = 0; t < NV; ++t) {
    const int64_t v = lane + int64_t(t) * TPR;
    if (v < nvec) {
      load_vec<scalar_t, acc_t, VEC>(row + head + v * VEC, cache[t]);
      pass1_chunk<VEC>(ka, a, cache[t], voff, head + v * VEC, useT, use1, kind, invT, invTt);
    }
  }
  for (int64_t v = lane + int64_t(NV) * TPR; v < nvec; v += TPR) {  // rows too long for the registers
    acc_t x[VEC];
    load_vec<scalar_t, acc_t, VEC>(row + head + v * VEC, x);
    pass1_chunk<VEC>(ka, a, x, voff, head + v * VEC, useT, use1, kind, invT, invTt);
  }
  if (tail0 + lane < C) {
    acc_t x[1] = {acc_t(row[tail0 + lane])};
    edge[1] = x[0];
    pass1_chunk<1>(ka, a, x, voff, tail0 + lane, useT, use1, kind, invT, invTt);
  }

  // Stored top-k entries: range, value and repeat checks (a bitmap of the row's classes in shared
  // memory: one atomicOr per entry), and their sums.
  acc_t tk[5] = {0, 0, 0, 0, 0};  // sum p, sum p z, sum z, sum p log p, bad entries (this thread's)
  if (topk) {
    for (int64_t w = lane; w < ka.bitmap_words; w += TPR) bitmap[w] = 0;
    row_barrier<TPR, ROWS>(rib);
    for (int64_t j = lane; j < k; j += TPR) {
      const int64_t c = load_id(ka.ids, ka.id_kind, b * k + j);
      const acc_t p = load_value<acc_t>(ka.vals, ka.val_kind, b * k + j, ka.codebook);
      bool ok = c >= 0 && c < C && p >= acc_t(0) && !isinf(p);
      if (c >= 0 && c < C) {
        const uint32_t bit = 1u << (c & 31);
        ok = ok && !(atomicOr(&bitmap[c >> 5], bit) & bit);
      }
      if (!ok) {
        tk[4] += 1;
        continue;
      }
      const acc_t z = acc_t(row[c]);
      tk[0] += p;
      tk[1] += p * z;
      tk[2] += z;
      tk[3] += xlogx(p);
    }
  }

  // The targets' logits, read before any thread of the row writes (the in-place variant).
  const double z_a = hard_valid ? double(row[ya]) : 0.0;
  const double z_b = hard_valid ? double(row[yb]) : 0.0;

  // Row reductions: the maxima, then every sum at once (in double).
  acc_t mx[2] = {a.m, a.mt};
  row_max<TPR, ROWS>(mx, smem, rib);
  const acc_t M = mx[0], MT = mx[1];
  double red[8];  // s1, sT, sum z, three target sums, a fourth (top-k: sum p log p), bad entries
  {
    const acc_t f = a.m == -kInf ? acc_t(0) : dexp(a.m - M);
    const acc_t fT = a.m == -kInf ? acc_t(0) : dexp((a.m - M) * invT);
    red[0] = double(a.s1 * f);
    red[1] = double(a.sT * fT);
    red[2] = double(a.sumz);
    if (kind == int32_t(SoftKind::Teacher)) {
      const acc_t delta = a.mt == -kInf ? acc_t(0) : (a.mt - MT) * invTt;
      const acc_t g = a.mt == -kInf ? acc_t(0) : dexp(delta);
      red[3] = double(g * a.se);
      red[4] = double(g * a.sez);
      red[5] = double(g * (a.sed + delta * a.se));
      red[6] = 0;
    } else if (kind == int32_t(SoftKind::Dense)) {
      red[3] = double(a.sp);
      red[4] = double(a.spz);
      red[5] = double(a.splogp);
      red[6] = 0;
    } else {
#pragma unroll
      for (int n = 0; n < 4; ++n) red[3 + n] = double(tk[n]);
    }
    red[7] = double(a.bad) + double(tk[4]);
  }
  row_sum<TPR, ROWS>(red, smem, rib);

  RowStats<double> st;
  st.m = double(M);
  st.s1 = use1 ? red[0] : 1.0;
  st.sT = useT ? red[1] : 1.0;
  st.sumz = red[2];
  TopkSums<double> sums;
  double dense_scale = 1;  // q = dense_scale * w
  bool bad = bad_hard || red[7] > 0;
  if (kind == int32_t(SoftKind::Teacher)) {
    sums.sp = 1;
    sums.spz = red[4] / red[3];
    sums.sz = st.sumz;
    sums.splogp = red[5] / red[3] - ::log(red[3]);
    dense_scale = 1.0 / red[3];
    bad = bad || !isfinite(double(MT));
  } else if (kind == int32_t(SoftKind::Dense)) {
    sums.sp = red[3];
    sums.spz = red[4];
    sums.sz = st.sumz;
    sums.splogp = red[5];
    bad = bad || (P.decode == int32_t(Decode::Marginal) && !(::fabs(red[3] - 1.0) <= kDenseSumTolerance));
  } else {
    sums.sp = red[3];
    sums.spz = red[4];
    sums.sz = red[5];
    sums.splogp = red[6];
  }

  double hard_scale = P.hard_weight * P.hard_red;
  if (P.has_hard && P.hard_mean) {
    const int64_t n = *ka.hard_count;
    hard_scale = P.hard_weight / double(n > 0 ? n : 1);
  }
  const RowCoeffs<double> r = finish_row<double>(P, st, sums, hard_valid, hard_scale, z_a, z_b, double(lam));
  if (lane == 0) static_cast<acc_t*>(ka.loss)[b] = bad ? kNaN : acc_t(r.loss);
  if (!ka.compute_grad) return;

  // ---- pass 2: bulk gradient ----
  const acc_t sa = acc_t(r.sa), ha = acc_t(r.ha), base = acc_t(r.base);
  const acc_t dcoef = acc_t(r.soft_corr * r.q_scale * dense_scale);
  scalar_t* grow = static_cast<scalar_t*>(ka.grad) + b * ka.gstride;
  const bool same_layout = head_of<scalar_t>(grow, C) == head;
  auto bulk = [&](acc_t x, int64_t i) -> acc_t {
    const acc_t d = x - M;
    acc_t g = base;
    if (useT) g += sa * dexp(d * invT);
    if (use1) g += ha * dexp(d);
    if (kind == int32_t(SoftKind::Teacher)) {
      const acc_t dt = (dense_value<acc_t>(ka, voff + i) - MT) * invTt;
      g += dt > -kInf ? dcoef * dexp(dt) : acc_t(0);
    } else if (kind == int32_t(SoftKind::Dense)) {
      g += dcoef * dense_value<acc_t>(ka, voff + i);
    }
    return bad ? kNaN : g;
  };
  auto store_vec = [&](const acc_t (&x)[VEC], int64_t i0) {
    Pack<scalar_t, VEC> out;
#pragma unroll
    for (int t = 0; t < VEC; ++t) out.v[t] = scalar_t(bulk(x[t], i0 + t));
    if (same_layout) {
      *reinterpret_cast<Pack<scalar_t, VEC>*>(grow + i0) = out;
    } else {
#pragma unroll
      for (int t = 0; t < VEC; ++t) grow[i0 + t] = out.v[t];
    }
  };
  if (lane < head) grow[lane] = scalar_t(bulk(edge[0], lane));
#pragma unroll
  for (int t = 0; t < NV; ++t) {
    const int64_t v = lane + int64_t(t) * TPR;
    if (v < nvec) store_vec(cache[t], head + v * VEC);
  }
  for (int64_t v = lane + int64_t(NV) * TPR; v < nvec; v += TPR) {
    acc_t x[VEC];
    load_vec<scalar_t, acc_t, VEC>(row + head + v * VEC, x);  // this thread's own elements: read before written
    store_vec(x, head + v * VEC);
  }
  if (tail0 + lane < C) grow[tail0 + lane] = scalar_t(bulk(edge[1], tail0 + lane));
  if (bad) return;
  row_barrier<TPR, ROWS>(rib);  // the bulk gradient is written

  // ---- special classes: each gets its correction added by one thread ----
  for (int64_t j = lane; topk && j < k; j += TPR) {
    const int64_t c = load_id(ka.ids, ka.id_kind, b * k + j);
    const double p = double(load_value<acc_t>(ka.vals, ka.val_kind, b * k + j, ka.codebook));
    double g = double(acc_t(grow[c])) + r.soft_corr * (r.q_scale * p - r.u);
    if (hard_valid && c == ya) g += r.corr_a;
    if (hard_valid && c == yb) g += r.corr_b;
    grow[c] = scalar_t(acc_t(g));
  }
  if (lane == 0 && hard_valid) {
    auto stored = [&](int64_t c) { return topk && ((bitmap[c >> 5] >> (c & 31)) & 1u); };
    if (!stored(ya)) grow[ya] = scalar_t(acc_t(double(acc_t(grow[ya])) + r.corr_a + (ya == yb ? r.corr_b : 0.0)));
    if (yb != ya && !stored(yb)) grow[yb] = scalar_t(acc_t(double(acc_t(grow[yb])) + r.corr_b));
  }
}

int sm_count(int device) {
  static int counts[64] = {0};
  int& n = counts[device % 64];
  if (n == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  }
  return n;
}

template <typename scalar_t, typename acc_t, int TPR, int BLOCK, int NV>
void launch(const KernelArgs& ka, cudaStream_t stream) {
  constexpr int ROWS = BLOCK / TPR;
  const size_t smem = size_t(ROWS) * size_t(ka.bitmap_words) * sizeof(uint32_t);
  auto kernel = soft_hard_kernel<scalar_t, acc_t, TPR, BLOCK, NV>;
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  }
  const dim3 grid(unsigned((ka.B + ROWS - 1) / ROWS));
  kernel<<<grid, BLOCK, smem, stream>>>(ka);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Threads per row: the smallest that holds the row in registers, larger while the batch alone
// would not give the GPU about one thread per core slot (but at least one vector per thread).
// 32 / 128 threads per row hold NVS vectors each (blocks of 256 / 512: several rows per block);
// 256 threads (one row per block) hold NVB each and re-read the rest of a longer row from L2.
// Register budgets are set so that ptxas reports no spills for any variant (-Xptxas -v).
template <typename scalar_t, typename acc_t>
void launch_for_shape(const KernelArgs& ka, cudaStream_t stream, int device) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  constexpr int NVS = sizeof(acc_t) == 8 ? 2 : 24 / VEC;  // 24 floats (4 doubles)
  constexpr int NVB = sizeof(acc_t) == 8 ? 1 : 32 / VEC;  // 32 floats: C <= 8192 held, the rest re-read
  const int64_t C = ka.P.C, nvec = C / VEC + 1;
  const int64_t busy = int64_t(sm_count(device)) * 2048;
  int tpr = nvec <= int64_t(NVS) * 32 ? 32 : nvec <= int64_t(NVS) * 128 ? 128 : 256;
  if (tpr == 32 && ka.B * 32 < busy && int64_t(128) * VEC <= C) tpr = 128;
  if (tpr == 128 && ka.B * 128 < busy && int64_t(256) * VEC <= C) tpr = 256;
  if (tpr == 32) {
    launch<scalar_t, acc_t, 32, 256, NVS>(ka, stream);
  } else if (tpr == 128) {
    launch<scalar_t, acc_t, 128, 512, NVS>(ka, stream);
  } else {
    launch<scalar_t, acc_t, 256, 256, NVB>(ka, stream);
  }
}

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
  const bool topk = a.P.has_soft && !dense_soft(a.P) && a.P.k > 0;
  ka.ids = topk ? a.ids.const_data_ptr() : nullptr;
  ka.vals = a.values.defined() && a.values.numel() > 0 ? a.values.const_data_ptr() : nullptr;
  ka.codebook = a.codebook.defined() ? a.codebook.const_data_ptr<float>() : nullptr;
  ka.ta = a.target_a.defined() ? a.target_a.const_data_ptr<int64_t>() : nullptr;
  ka.tb = a.target_b.defined() ? a.target_b.const_data_ptr<int64_t>() : nullptr;
  ka.lam = a.lam.defined() ? a.lam.const_data_ptr() : nullptr;
  ka.B = a.B;
  ka.id_kind = a.id_kind;
  ka.val_kind = a.val_kind;
  const int64_t words = topk ? (a.P.C + 31) / 32 : 0;
  TORCH_CHECK(words * 4 <= 200 * 1024, "soft_hard_loss: C = ", a.P.C, " is too many classes for the CUDA kernel's "
              "duplicate-id bitmap with stored top-k labels");
  ka.bitmap_words = int32_t(words);
  at::Tensor count;
  if (a.P.has_hard && a.P.hard_mean) {
    count = a.target_a.ne(a.P.ignore_index).sum();  // stays on the device: no host sync
    ka.hard_count = count.const_data_ptr<int64_t>();
  } else {
    ka.hard_count = nullptr;
  }
  const int device = a.logits.device().index();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.logits.scalar_type(), "soft_hard_loss_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    launch_for_shape<scalar_t, acc_t>(ka, stream, device);
  });
}

// grad[b, :] *= f[b], one block per row; a row whose factor is exactly 1 is not touched (the block
// reads one scalar and leaves), so a reduced loss's backward costs one tiny launch.
template <typename scalar_t, typename f_t>
__global__ void __launch_bounds__(256) scale_rows_kernel(scalar_t* grad, int64_t gstride, int64_t C, const f_t* f,
                                                         int64_t fstride) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t b = blockIdx.x;
  const f_t s = f[b * fstride];
  if (s == f_t(1)) return;
  scalar_t* row = grad + b * gstride;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) row[i] = scalar_t(acc_t(row[i]) * acc_t(s));
}

void soft_hard_loss_scale_cuda(at::Tensor& grad, const at::Tensor& grad_rows) {
  const c10::cuda::CUDAGuard guard(grad.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(grad.device().index()).stream();
  const at::Tensor f = grad_rows.scalar_type() == at::kDouble ? grad_rows : grad_rows.to(at::kFloat);
  const int64_t B = grad.size(0), C = grad.size(1);
  TORCH_CHECK(B <= int64_t(2147483647), "_soft_hard_loss_scale_: batch too large");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "soft_hard_loss_scale_cuda", [&] {
    if (f.scalar_type() == at::kDouble) {
      scale_rows_kernel<scalar_t, double><<<unsigned(B), 256, 0, stream>>>(
          grad.data_ptr<scalar_t>(), grad.stride(0), C, f.const_data_ptr<double>(), f.stride(0));
    } else {
      scale_rows_kernel<scalar_t, float><<<unsigned(B), 256, 0, stream>>>(
          grad.data_ptr<scalar_t>(), grad.stride(0), C, f.const_data_ptr<float>(), f.stride(0));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void cuda_loss(const c10::OperatorHandle&, torch::jit::Stack* s) { soft_hard_loss_call(&soft_hard_loss_cuda_kernel, s); }
void cuda_loss_inplace(const c10::OperatorHandle&, torch::jit::Stack* s) {
  soft_hard_loss_inplace_call(&soft_hard_loss_cuda_kernel, s);
}
void cuda_scale(const c10::OperatorHandle&, torch::jit::Stack* s) {
  soft_hard_loss_scale_call(&soft_hard_loss_scale_cuda, s);
}

}  // namespace
}  // namespace hald

TORCH_LIBRARY_IMPL(hald, CUDA, m) {
  m.impl("soft_hard_loss", torch::CppFunction::makeFromBoxedFunction<&hald::cuda_loss>());
  m.impl("soft_hard_loss_", torch::CppFunction::makeFromBoxedFunction<&hald::cuda_loss_inplace>());
  m.impl("_soft_hard_loss_scale_", torch::CppFunction::makeFromBoxedFunction<&hald::cuda_scale>());
}
