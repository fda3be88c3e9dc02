// Per-row math of the fused soft-KL / hard-CE loss, shared by the CPU and CUDA kernels.
//
// Notation (METHOD.md section 3): z = logits row (C classes), T = temperature, s = z / T.
// A stored soft label keeps k probabilities p_j at classes c_j (distinct). Decoded target q:
//   marginal : q_{c_j} = p_j, every other class u = max(1 - sum p, 0) / (C - k)
//   renorm   : q_{c_j} = p_j / sum p, others 0
//   truncate : q_{c_j} = p_j, others 0 (sums to less than one)
// Soft cross-entropy  CE = Sq * LSE(s) - sum_j q_j s_{c_j} - u * (sum_i s_i - sum_j s_{c_j}),
// KL = CE + sum_j q_j log q_j + (C - k) u log u, with gradient dz_i = (Sq * softmax(s)_i - q_i) / T.
// Hard term with smoothing eps and an optional CutMix pair (y_a, y_b, lam):
//   t = (1 - eps) * (lam * onehot(y_a) + (1 - lam) * onehot(y_b)) + eps / C,
//   CE_hard = LSE(z) - sum_i t_i z_i, dz_i = softmax(z)_i - t_i.
// The row kernels reduce a few sums over the row and over the k stored entries, then call
// finish_row(); the gradient of every class is  sa * exp((z_i - m) / T) + ha * exp(z_i - m) + base,
// plus a correction at the stored classes and at y_a / y_b (see RowCoeffs).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define HALD_HD __host__ __device__ __forceinline__
#else
#define HALD_HD inline
#endif

namespace hald {

enum class Decode : int32_t { Marginal = 0, Renorm = 1, Truncate = 2 };
enum class Reduction : int32_t { None = 0, Sum = 1, BatchMean = 2, Mean = 3 };
// Where the soft target comes from:
//   Topk    : k stored entries at ids c_j (METHOD.md section 3);
//   Dense   : a value for every class ([B, C], k == C, class j at column j), decoded like a stored
//             label with k == C (marginal: as given, must sum to one; renorm; truncate);
//   Teacher : the teacher's logits t [B, C]; q = softmax(t / T_teacher), never materialised.
//             With d_i = (t_i - max t) / T_teacher, e_i = exp(d_i), S = sum e_i:
//             q_i = e_i / S, sum q = 1, sum q z = (sum e z) / S, sum q log q = (sum e d) / S - log S.
enum class SoftKind : int32_t { Topk = 0, Dense = 1, Teacher = 2 };
// Dense targets under "marginal" must sum to one within this (fp16 / 8-bit stores round each entry).
constexpr double kDenseSumTolerance = 1e-2;

// Everything the row math needs that is the same for every row.
struct LossParams {
  int64_t C = 0;            // classes
  int64_t k = 0;            // stored entries per row (0: no soft term)
  double temperature = 1.0;
  double soft_scale = 0.0;  // soft_weight * (T^2 if Hinton) * reduction factor
  double hard_weight = 0.0; // hard_weight before the reduction factor
  double hard_red = 1.0;    // hard reduction factor (1, 1/B); for "mean" the kernels divide by the count
  double smoothing = 0.0;
  int32_t decode = 0;       // Decode
  int32_t soft_kind = 0;    // SoftKind
  double teacher_temperature = 1.0;
  bool soft_kl = true;      // KL (true) or soft cross-entropy (false)
  bool has_soft = false;
  bool has_hard = false;
  bool has_pair = false;    // CutMix pair given (target_b, lambda)
  bool hard_mean = false;   // hard term divided by the number of non-ignored rows
  int64_t ignore_index = -100;
};

template <typename acc_t>
HALD_HD acc_t xlogx(acc_t x) {
  return x > acc_t(0) ? x * ::log(x) : acc_t(0);
}

// Sums over one row's logits, produced by the kernels' streaming passes.
template <typename acc_t>
struct RowStats {
  acc_t m;     // max_i z_i
  acc_t s1;    // sum_i exp(z_i - m)
  acc_t sT;    // sum_i exp((z_i - m) / T)
  acc_t sumz;  // sum_i z_i
};

// Sums over the k stored entries of one row (all parallel-reducible).
template <typename acc_t>
struct TopkSums {
  acc_t sp = 0;      // sum p_j
  acc_t spz = 0;     // sum p_j z_{c_j}
  acc_t sz = 0;      // sum z_{c_j}
  acc_t splogp = 0;  // sum p_j log p_j
  HALD_HD void add(acc_t p, acc_t z) {
    sp += p;
    spz += p * z;
    sz += z;
    splogp += xlogx(p);
  }
  HALD_HD void merge(const TopkSums& o) {
    sp += o.sp;
    spz += o.spz;
    sz += o.sz;
    splogp += o.splogp;
  }
};

// Row result: loss, and the coefficients of its gradient.
//   grad_i = sa * exp((z_i - m)/T) + ha * exp(z_i - m) + base
//          + [i == c_j] * (soft_corr * (q_scale * p_j - u))
//          + [i == y_a] * corr_a + [i == y_b] * corr_b
template <typename acc_t>
struct RowCoeffs {
  acc_t loss;
  acc_t sa, ha, base;
  acc_t soft_corr, q_scale, u;
  acc_t corr_a, corr_b;
};

// hard_valid: the row has a hard target (not ignored); hard_scale: hard weight times the reduction
// factor for this row. z_a / z_b are the logits at y_a / y_b (ignored when !hard_valid).
template <typename acc_t>
HALD_HD RowCoeffs<acc_t> finish_row(const LossParams& P, const RowStats<acc_t>& st, const TopkSums<acc_t>& tk,
                                    bool hard_valid, acc_t hard_scale, acc_t z_a, acc_t z_b, acc_t lam) {
  RowCoeffs<acc_t> r;
  r.loss = 0;
  r.sa = 0;
  r.ha = 0;
  r.base = 0;
  r.soft_corr = 0;
  r.q_scale = 1;
  r.u = 0;
  r.corr_a = 0;
  r.corr_b = 0;
  const acc_t C = acc_t(P.C);
  if (P.has_soft) {
    const acc_t T = acc_t(P.temperature);
    const acc_t invT = acc_t(1) / T;
    const acc_t K = acc_t(P.k);
    acc_t u = 0, q_scale = 1;
    if (P.decode == int32_t(Decode::Marginal)) {
      const acc_t rest = acc_t(1) - tk.sp;
      u = (P.C > P.k && rest > acc_t(0)) ? rest / (C - K) : acc_t(0);
    } else if (P.decode == int32_t(Decode::Renorm)) {
      q_scale = tk.sp > acc_t(0) ? acc_t(1) / tk.sp : acc_t(0);
    }
    const acc_t sq_top = q_scale * tk.sp;
    const acc_t Sq = sq_top + u * (C - K);
    const acc_t lse_s = st.m * invT + ::log(st.sT);
    const acc_t sum_qs = q_scale * tk.spz * invT;
    const acc_t rest_s = (st.sumz - tk.sz) * invT;
    acc_t loss = Sq * lse_s - sum_qs - u * rest_s;
    if (P.soft_kl) {
      // sum_j xlogx(q_scale * p_j) = q_scale * (splogp + sp * log q_scale)
      const acc_t top_ent = q_scale > acc_t(0) ? q_scale * (tk.splogp + tk.sp * ::log(q_scale)) : acc_t(0);
      loss += top_ent + (C - K) * xlogx(u);
    }
    const acc_t s = acc_t(P.soft_scale);
    r.loss += s * loss;
    r.sa = s * Sq * invT / st.sT;
    r.base -= s * u * invT;
    r.soft_corr = -s * invT;
    r.q_scale = q_scale;
    r.u = u;
  }
  if (P.has_hard && hard_valid) {
    const acc_t eps = acc_t(P.smoothing);
    const acc_t lse = st.m + ::log(st.s1);
    const acc_t w_a = (acc_t(1) - eps) * lam, w_b = (acc_t(1) - eps) * (acc_t(1) - lam);
    const acc_t ce = lse - w_a * z_a - w_b * z_b - eps / C * st.sumz;
    r.loss += hard_scale * ce;
    r.ha = hard_scale / st.s1;
    r.base -= hard_scale * eps / C;
    r.corr_a = -hard_scale * w_a;
    r.corr_b = -hard_scale * w_b;
  }
  return r;
}

HALD_HD bool dense_soft(const LossParams& P) { return P.soft_kind != int32_t(SoftKind::Topk); }

// Full-precision gradient at one class, given its logit (used for the few special classes, so the
// value is computed once in fp32 and written once: no read-modify-write in a 16-bit dtype).
template <typename acc_t>
HALD_HD acc_t bulk_grad(const RowCoeffs<acc_t>& r, const RowStats<acc_t>& st, acc_t z, acc_t invT) {
  const acc_t d = z - st.m;
  acc_t g = r.base;
  if (r.sa != acc_t(0)) g += r.sa * ::exp(d * invT);
  if (r.ha != acc_t(0)) g += r.ha * ::exp(d);
  return g;
}

}  // namespace hald
