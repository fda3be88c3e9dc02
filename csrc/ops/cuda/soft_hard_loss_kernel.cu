// CUDA kernel of the fused soft-KL / hard-CE loss.
//
// TPR threads own one logits row (TPR = 32, 128 or 256; several rows per block below 256). Two
// variants of one kernel template, chosen per call by launch_for_shape (HALD_LOSS_KERNEL overrides):
//   staged    (the default for float / half / bfloat16 logits with stored top-k labels or hard targets
//             only, where the block's rows fit in shared memory with room for two blocks per
//             multiprocessor: on an H100 / H200, C up to about 28k in fp32 and 56k in 16-bit types):
//             the row is copied into shared memory with cp.async, all of it in flight at once, and
//             both passes read it there. One DRAM read of the logits whatever C, and at most 80 registers
//             a thread (3 blocks of 256 per SM where shared memory allows; no spills).
//   registers (float64, dense targets and teacher logits, rows too long to stage): each thread keeps
//             its first NV 16-byte vectors of the row in registers for pass 2 and re-reads the rest
//             (from L2 when it is still there). The host picks the smallest TPR whose threads hold
//             the whole row, then a larger one while the batch alone would leave the GPU idle
//             (B = 1024, C = 1000 runs 128 threads per row).
// Per row:
//   pass 1: one streaming read of the logits (and of a dense target / the teacher's logits beside
//           them), peeled to 16-byte alignment (scalar head, vector body, scalar tail: every C and
//           row stride vectorises; a staged row keeps the global row's alignment), with online
//           max / sum-exp for z and z/T and, for a teacher, a second online softmax of t / T_t. The
//           k stored entries are gathered and checked for repeats in O(k) with a bitmap of the row's
//           classes in shared memory. All row sums are reduced across threads in double, and the
//           row is finished in double (end_row, finish_row).
//   pass 2: the bulk gradient, written with the same peeling; then the few special classes (stored
//           ids, y_a, y_b) get their correction added to the written value, each by one thread.
// Memory traffic: the logits (and a dense target) read once from DRAM, the gradient written once; no
// scratch in global memory.
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
#include <cstdlib>
#include <cstring>
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
  int32_t stage_offset;       // staged kernel: where the rows start in dynamic shared memory (bytes)
  int64_t srow_elems;         // staged kernel: elements per staged row (C plus alignment room)
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

// Copies 16 bytes from global to shared memory: cp.async (sm_80+: no registers, many copies in flight
// per thread, completed by stage_wait), a plain vector copy before.
__device__ __forceinline__ void copy16_async(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
#else
  *static_cast<uint4*>(smem) = *static_cast<const uint4*>(gmem);
#endif
}

// Waits for this thread's copy16_async copies (the row barrier after it publishes them to the row).
__device__ __forceinline__ void stage_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
#endif
}

// Starts the copy of one logits row into shared memory and returns where it will be: srow[i] is
// class i, placed so that srow + head is 16-byte aligned as row + head is (head = head_of(row, C): both
// passes peel the staged row with the global row's head, exactly as they would the global row).
template <typename scalar_t, int TPR>
__device__ __forceinline__ const scalar_t* stage_row(const scalar_t* row, int64_t C, int64_t head, scalar_t* sbase,
                                                     int lane) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  const int64_t nvec = (C - head) / VEC, tail0 = head + nvec * VEC;
  scalar_t* srow = sbase + (VEC - head % VEC) % VEC;
  for (int64_t v = lane; v < nvec; v += TPR) copy16_async(srow + head + v * VEC, row + head + v * VEC);
  if (lane < head) srow[lane] = row[lane];
  if (tail0 + lane < C) srow[tail0 + lane] = row[tail0 + lane];
  return srow;
}

template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void load_vec(const scalar_t* p, acc_t (&v)[VEC]) {
  const Pack<scalar_t, VEC> pk = *reinterpret_cast<const Pack<scalar_t, VEC>*>(p);
#pragma unroll
  for (int t = 0; t < VEC; ++t) v[t] = acc_t(pk.v[t]);
}

// What a row's reductions leave for its gradient pass.
template <typename acc_t>
struct RowEnd {
  RowCoeffs<double> r;
  acc_t M, MT;          // max logit, max teacher logit
  double dense_scale;   // q = dense_scale * (dense value or exp of the teacher's logit)
  bool bad;             // poisoned row: NaN loss and gradient
};

// The end of a row, shared by both kernels: its maxima, then every sum at once (in double) over the
// row's TPR threads, finished in double (finish_row); lane 0 writes the row's loss.
//   a: this thread's pass-1 sums; tk: its stored top-k sums (sum p, sum p z, sum z, sum p log p, bad)
template <int TPR, int ROWS, typename acc_t>
__device__ __forceinline__ RowEnd<acc_t> end_row(const KernelArgs& ka, const Acc<acc_t>& a, const acc_t (&tk)[5],
                                                 int kind, bool useT, bool use1, bool hard_valid, bool bad_hard,
                                                 double z_a, double z_b, acc_t lam, double (*smem)[SMEM_W], int rib,
                                                 int lane, int64_t b) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
  const LossParams& P = ka.P;
  const acc_t invT = acc_t(1) / acc_t(P.temperature);
  const acc_t invTt = acc_t(1) / acc_t(P.teacher_temperature);
  // Row reductions: the maxima, then every sum at once (in double).
  acc_t mx[2] = {a.m, a.mt};
  row_max<TPR, ROWS>(mx, smem, rib);
  RowEnd<acc_t> e;
  const acc_t M = mx[0], MT = mx[1];
  e.M = M;
  e.MT = MT;
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
  e.dense_scale = 1;  // q = dense_scale * w
  bool bad = bad_hard || red[7] > 0;
  if (kind == int32_t(SoftKind::Teacher)) {
    sums.sp = 1;
    sums.spz = red[4] / red[3];
    sums.sz = st.sumz;
    sums.splogp = red[5] / red[3] - ::log(red[3]);
    e.dense_scale = 1.0 / red[3];
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
  e.r = finish_row<double>(P, st, sums, hard_valid, hard_scale, z_a, z_b, double(lam));
  e.bad = bad;
  if (lane == 0) static_cast<acc_t*>(ka.loss)[b] = bad ? kNaN : acc_t(e.r.loss);
  return e;
}

// TPR threads per row, BLOCK threads per block, NV vectors per thread held in registers.
// STAGED: the row is first copied into shared memory (all of it in flight at once, cp.async), and
// both passes read it there (NV = 0): one read of the logits from DRAM whatever C, registers left
// for occupancy (MINB blocks per SM). Otherwise both passes read global memory, the row's first NV
// vectors per thread kept in registers for pass 2 and the rest re-read (from L2).
template <typename scalar_t, typename acc_t, int TPR, int BLOCK, int NV, bool STAGED, int MINB>
__global__ void __launch_bounds__(BLOCK, MINB) soft_hard_kernel(KernelArgs ka) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  constexpr int ROWS = BLOCK / TPR;
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
  __shared__ double smem_all[ROWS][TPR / 32][SMEM_W];
  __shared__ double corr_all[ROWS][5];  // the special classes' coefficients, kept out of registers in pass 2
  extern __shared__ __align__(16) unsigned char dyn_smem[];  // bitmaps [ROWS][words], then staged rows
  uint32_t* bitmap_all = reinterpret_cast<uint32_t*>(dyn_smem);
  const LossParams& P = ka.P;
  const int lane = threadIdx.x % TPR;
  const int rib = threadIdx.x / TPR;  // row in block
  const int64_t b = int64_t(blockIdx.x) * ROWS + rib;
  if (b >= ka.B) return;  // a whole row group leaves together
  double (*smem)[SMEM_W] = smem_all[rib];
  uint32_t* bitmap = bitmap_all + int64_t(rib) * ka.bitmap_words;

  const int64_t C = P.C, k = P.k;
  const scalar_t* row = static_cast<const scalar_t*>(ka.logits) + b * ka.lstride;
  const int64_t head = head_of<scalar_t>(row, C);  // of the global row (a staged row keeps its alignment)
  if constexpr (STAGED) {  // in flight while the hard target is read below
    scalar_t* sbase = reinterpret_cast<scalar_t*>(dyn_smem + ka.stage_offset) + int64_t(rib) * ka.srow_elems;
    row = stage_row<scalar_t, TPR>(row, C, head, sbase, lane);
  }
  const acc_t invT = acc_t(1) / acc_t(P.temperature);
  const acc_t invTt = acc_t(1) / acc_t(P.teacher_temperature);
  const bool dense = P.has_soft && dense_soft(P);
  const int kind = dense && !STAGED ? P.soft_kind : -1;  // what pass 1 reads beside the logits (staged: nothing)
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
  if constexpr (STAGED) {
    stage_wait();
    row_barrier<TPR, ROWS>(rib);
  }

  // ---- pass 1 ----
  const int64_t nvec = (C - head) / VEC;
  const int64_t tail0 = head + nvec * VEC;
  const int64_t voff = b * C;  // dense target row offset (contiguous [B, C])
  Acc<acc_t> a;
  a.m = -kInf, a.s1 = 0, a.sT = 0, a.sumz = 0;
  a.mt = -kInf, a.se = 0, a.sez = 0, a.sed = 0;
  a.sp = 0, a.spz = 0, a.splogp = 0, a.bad = 0;
  acc_t cache[NV > 0 ? NV : 1][VEC];
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

  const RowEnd<acc_t> e = end_row<TPR, ROWS>(ka, a, tk, kind, useT, use1, hard_valid, bad_hard, z_a, z_b, lam,
                                            smem, rib, lane, b);
  const RowCoeffs<double>& r = e.r;
  const acc_t M = e.M, MT = e.MT;
  const double dense_scale = e.dense_scale;
  const bool bad = e.bad;
  if (!ka.compute_grad) return;
  double* corr = corr_all[rib];  // read after the barrier that ends pass 2
  if (lane == 0) {
    corr[0] = r.soft_corr;
    corr[1] = r.q_scale;
    corr[2] = r.u;
    corr[3] = r.corr_a;
    corr[4] = r.corr_b;
  }

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
    double g = double(acc_t(grow[c])) + corr[0] * (corr[1] * p - corr[2]);
    if (hard_valid && c == ya) g += corr[3];
    if (hard_valid && c == yb) g += corr[4];
    grow[c] = scalar_t(acc_t(g));
  }
  if (lane == 0 && hard_valid) {
    auto stored = [&](int64_t c) { return topk && ((bitmap[c >> 5] >> (c & 31)) & 1u); };
    if (!stored(ya)) grow[ya] = scalar_t(acc_t(double(acc_t(grow[ya])) + corr[3] + (ya == yb ? corr[4] : 0.0)));
    if (yb != ya && !stored(yb)) grow[yb] = scalar_t(acc_t(double(acc_t(grow[yb])) + corr[4]));
  }
}

// Device attributes, read once per device.
struct DeviceInfo {
  int sms = 0;              // multiprocessors
  int smem_per_sm = 0;      // shared memory per multiprocessor (bytes)
  int smem_per_block = 0;   // the most one block may opt in to (bytes)
  int smem_reserved = 0;    // shared memory the driver reserves per block (bytes)
};

const DeviceInfo& device_info(int device) {
  static DeviceInfo infos[64];
  DeviceInfo& d = infos[device % 64];
  if (d.sms == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_reserved, cudaDevAttrReservedSharedMemoryPerBlock, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device));
  }
  return d;
}

// Which kernel: HALD_LOSS_KERNEL = auto (the default: staged where launch_for_shape can, registers
// elsewhere), staged (the same today: kept apart so that a measured switch of auto keeps a way to ask
// for the staged kernel) or registers. Read at each call, so a benchmark or a test can compare both in one process.
enum class LossKernel { Auto, Staged, Registers };

LossKernel requested_kernel() {
  const char* v = std::getenv("HALD_LOSS_KERNEL");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return LossKernel::Auto;
  if (std::strcmp(v, "staged") == 0) return LossKernel::Staged;
  if (std::strcmp(v, "registers") == 0) return LossKernel::Registers;
  TORCH_CHECK(false, "HALD_LOSS_KERNEL=", v, ": expected auto, staged or registers");
}

// Dynamic shared memory of one block: the rows' duplicate-id bitmaps, then (staged) the rows, from
// the first 16-byte boundary after the bitmaps (stage_offset).
size_t stage_offset(const KernelArgs& ka, int rows) {
  return (size_t(rows) * size_t(ka.bitmap_words) * sizeof(uint32_t) + 15) / 16 * 16;
}

template <typename scalar_t>
size_t block_smem(const KernelArgs& ka, int rows, bool staged) {
  if (!staged) return size_t(rows) * size_t(ka.bitmap_words) * sizeof(uint32_t);
  return stage_offset(ka, rows) + size_t(rows) * size_t(ka.srow_elems) * sizeof(scalar_t);
}

// Static shared memory of the staged variants is below this (ptxas, sm_90: 320-592 bytes); the staging
// test counts it with the driver's reservation per block.
constexpr size_t kStaticSmemBound = 1024;

template <typename scalar_t, typename acc_t, int TPR, int BLOCK, int NV, bool STAGED, int MINB>
void launch(KernelArgs ka, cudaStream_t stream, int device) {
  constexpr int ROWS = BLOCK / TPR;
  const size_t smem = block_smem<scalar_t>(ka, ROWS, STAGED);
  ka.stage_offset = STAGED ? int32_t(stage_offset(ka, ROWS)) : 0;
  auto kernel = soft_hard_kernel<scalar_t, acc_t, TPR, BLOCK, NV, STAGED, MINB>;
  // Without an opt-in, static + dynamic shared memory must stay under 48 KB. Opt in once per device, to
  // the most the device allows beside the kernel's static memory: never lowered afterwards, so calls
  // of different sizes from several host threads cannot undo each other's setting.
  static bool opted[64] = {false};
  if (!opted[device % 64]) {
    cudaFuncAttributes fa;
    C10_CUDA_CHECK(cudaFuncGetAttributes(&fa, kernel));
    const int most = device_info(device).smem_per_block - int(fa.sharedSizeBytes);
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, most));
    opted[device % 64] = true;
  }
  const dim3 grid(unsigned((ka.B + ROWS - 1) / ROWS));
  kernel<<<grid, BLOCK, smem, stream>>>(ka);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Threads per row: the smallest whose threads each hold at most `per_thread` vectors of the row,
// larger while the batch alone would not give the GPU about one thread per core slot (but at least
// one vector per thread).
int threads_per_row(int64_t nvec, int64_t per_thread, int64_t C, int vec, int64_t B, int64_t busy) {
  int tpr = nvec <= per_thread * 32 ? 32 : nvec <= per_thread * 128 ? 128 : 256;
  if (tpr == 32 && B * 32 < busy && int64_t(128) * vec <= C) tpr = 128;
  if (tpr == 128 && B * 128 < busy && int64_t(256) * vec <= C) tpr = 256;
  return tpr;
}

// Staged kernel (float / half / bfloat16 logits, stored top-k labels or hard targets only): 32, 128
// or 256 threads per row (at most 8 vectors each below 256), blocks of 256 with at most 80 registers a
// thread (3 blocks per SM where shared memory allows), when the block's rows fit in shared memory with
// room for two blocks per multiprocessor.
// Registers kernel otherwise: 32 / 128 threads per row hold NVS vectors each (blocks of 256 / 512:
// several rows per block); 256 threads (one row per block) hold NVB each and re-read the rest of a
// longer row from L2. ptxas (-Xptxas -v, sm_90, CUDA 13.0): the staged variants 74-80 registers and no
// spills; the registers kernel 114-129, with 4-8 bytes of spill stores at 256 threads per row (capped
// at 128 registers: two blocks per SM).
template <typename scalar_t, typename acc_t>
void launch_for_shape(KernelArgs ka, cudaStream_t stream, int device) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  constexpr int NVS = sizeof(acc_t) == 8 ? 2 : 24 / VEC;  // 24 floats (4 doubles)
  constexpr int NVB = sizeof(acc_t) == 8 ? 1 : 32 / VEC;  // 32 floats: C <= 8192 held, the rest re-read
  const DeviceInfo& dev = device_info(device);
  const int64_t C = ka.P.C, nvec = C / VEC + 1;
  const int64_t busy = int64_t(dev.sms) * 2048;
  const LossKernel want = requested_kernel();  // read (and checked) on every path
  if constexpr (!std::is_same_v<scalar_t, double>) {
    if (!(ka.P.has_soft && dense_soft(ka.P)) && want != LossKernel::Registers) {
      ka.srow_elems = (C + 2 * VEC - 1) / VEC * VEC;  // C plus up to VEC - 1 of alignment shift
      const int tpr = threads_per_row(nvec, 8, C, VEC, ka.B, busy);
      const size_t dyn = block_smem<scalar_t>(ka, 256 / tpr, true);
      const size_t per_block = dyn + kStaticSmemBound + size_t(dev.smem_reserved);  // what a block takes of an SM
      if (dyn + kStaticSmemBound <= size_t(dev.smem_per_block) && 2 * per_block <= size_t(dev.smem_per_sm)) {
        if (tpr == 32) {
          launch<scalar_t, acc_t, 32, 256, 0, true, 3>(ka, stream, device);
        } else if (tpr == 128) {
          launch<scalar_t, acc_t, 128, 256, 0, true, 3>(ka, stream, device);
        } else {
          launch<scalar_t, acc_t, 256, 256, 0, true, 3>(ka, stream, device);
        }
        return;
      }
    }
  }
  ka.srow_elems = 0;
  const int tpr = threads_per_row(nvec, NVS, C, VEC, ka.B, busy);
  if (tpr == 32) {
    launch<scalar_t, acc_t, 32, 256, NVS, false, 1>(ka, stream, device);
  } else if (tpr == 128) {
    launch<scalar_t, acc_t, 128, 512, NVS, false, 1>(ka, stream, device);
  } else {
    launch<scalar_t, acc_t, 256, 256, NVB, false, 2>(ka, stream, device);
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
  ka.stage_offset = 0;
  ka.srow_elems = 0;
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
