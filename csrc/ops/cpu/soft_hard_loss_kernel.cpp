// CPU kernel of the fused soft-KL / hard-CE loss.
//
// Soft targets: a stored top-k label (k gathers per row), or a dense one (probabilities / codes
// [B, C], or the teacher's logits with their own temperature, whose exp((t - max t) / T_t) goes to a
// per-thread row buffer); nothing [B, C] beyond the gradient.
//
// Rows run in parallel (at::parallel_for). Each row is touched three times, always from L1/L2:
//   1. load (converting 16-bit logits to fp32) + max + sum,
//   2. exp((z - m)/T) and exp(z - m) into row buffers + their sums (and the dense target's sums),
//   3. gradient write from the buffers, then the few stored classes / targets are corrected in fp32.
// Forward only (no gradient wanted) stops after 2. Memory traffic per row: the logits read once and
// the gradient written once; the rest stays in cache.
//
// Precision: every per-row sum is formed in fp32 over blocks of kBlock classes (vector lanes, a few
// dozen terms each) and the block sums are added in double; the row's loss and its gradient
// coefficients are finished in double. The loss is then as close to a float64 computation as
// PyTorch's cascade-summed fp32 reductions are, at any C.
//
// The float loops are plain loops with `omp simd` reductions and a polynomial exp, compiled for
// AVX-512, AVX2 and baseline x86-64 (target_clones picks one when the library loads).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../soft_hard_loss.h"
#include "hald/cpu_simd.h"

namespace hald {
namespace {

constexpr int64_t kBlock = 512;  // classes per fp32 partial sum
constexpr float kInf = std::numeric_limits<float>::infinity();

HALD_CLONES void max_sum_f32(const float* z, int64_t C, float* m_out, double* sum_out) {
  float m = -kInf;
  double s = 0;
  for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
    const int64_t c1 = std::min(C, c0 + kBlock);
    float bs = 0.f;
#pragma omp simd reduction(max : m) reduction(+ : bs)
    for (int64_t i = c0; i < c1; ++i) {
      m = z[i] > m ? z[i] : m;
      bs += z[i];
    }
    s += bs;
  }
  *m_out = m;
  *sum_out = s;
}

// bf16 -> fp32 is a 16-bit shift; done on raw bits so it vectorises.
HALD_CLONES void load_bf16(const uint16_t* src, float* dst, int64_t C) {
#pragma omp simd
  for (int64_t i = 0; i < C; ++i) {
    const uint32_t bits = uint32_t(src[i]) << 16;
    float v;
    std::memcpy(&v, &bits, sizeof(v));
    dst[i] = v;
  }
}

// e_i = exp((z_i - m) * scale); returns sum e_i.
HALD_CLONES double exp_sum(const float* z, float m, float scale, float* e, int64_t C) {
  double s = 0;
  for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
    const int64_t c1 = std::min(C, c0 + kBlock);
    float bs = 0.f;
#pragma omp simd reduction(+ : bs)
    for (int64_t i = c0; i < c1; ++i) {
      const float v = exp_nonpos((z[i] - m) * scale);
      e[i] = v;
      bs += v;
    }
    s += bs;
  }
  return s;
}

HALD_CLONES void exp_sum2(const float* z, float m, float invT, float* e1, float* eT, int64_t C, double* s1_out,
                          double* sT_out) {
  double s1 = 0, sT = 0;
  for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
    const int64_t c1 = std::min(C, c0 + kBlock);
    float b1 = 0.f, bT = 0.f;
#pragma omp simd reduction(+ : b1, bT)
    for (int64_t i = c0; i < c1; ++i) {
      const float d = z[i] - m;
      const float a = exp_nonpos(d), b = exp_nonpos(d * invT);
      e1[i] = a;
      eT[i] = b;
      b1 += a;
      bT += b;
    }
    s1 += b1;
    sT += bT;
  }
  *s1_out = s1;
  *sT_out = sT;
}

HALD_CLONES void grad1(float* out, const float* e, float a, float base, int64_t C) {
#pragma omp simd
  for (int64_t i = 0; i < C; ++i) out[i] = a * e[i] + base;
}

HALD_CLONES void grad2(float* out, const float* eT, const float* e1, float sa, float ha, float base, int64_t C) {
#pragma omp simd
  for (int64_t i = 0; i < C; ++i) out[i] = sa * eT[i] + ha * e1[i] + base;
}

// out_i += a * w_i (the dense soft target's share of the gradient).
HALD_CLONES void axpy(float* out, const float* w, float a, int64_t C) {
#pragma omp simd
  for (int64_t i = 0; i < C; ++i) out[i] += a * w[i];
}

// Sums of a dense target row w against the logits z: sum w, sum w z; `bad` counts entries that are
// NaN, infinite or negative.
HALD_CLONES void dense_sums(const float* w, const float* z, int64_t C, double* sw_out, double* swz_out,
                            float* bad_out) {
  double sw = 0, swz = 0;
  float bad = 0.f;
  for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
    const int64_t c1 = std::min(C, c0 + kBlock);
    float bw = 0.f, bwz = 0.f;
#pragma omp simd reduction(+ : bw, bwz, bad)
    for (int64_t i = c0; i < c1; ++i) {
      const float v = w[i];
      bw += v;
      bwz += v * z[i];
      bad += (v >= 0.f && v <= 3.4e38f) ? 0.f : 1.f;  // false for NaN, inf and negatives
    }
    sw += bw;
    swz += bwz;
  }
  *sw_out = sw;
  *swz_out = swz;
  *bad_out = bad;
}

// Teacher row: d_i = (t_i - mt) * invT, e_i = exp(d_i) written over t; sum e, sum e z, sum e d.
// A -inf teacher logit (a masked class) has e = 0 and adds nothing (q = 0 there).
HALD_CLONES void teacher_sums(float* t, const float* z, float mt, float invT, int64_t C, double* se_out,
                              double* sez_out, double* sed_out) {
  double se = 0, sez = 0, sed = 0;
  for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
    const int64_t c1 = std::min(C, c0 + kBlock);
    float be = 0.f, bez = 0.f, bed = 0.f;
#pragma omp simd reduction(+ : be, bez, bed)
    for (int64_t i = c0; i < c1; ++i) {
      const float d = (t[i] - mt) * invT;
      const bool live = d > -kInf;
      const float e = live ? exp_nonpos(d) : 0.f;
      t[i] = e;
      be += e;
      bez += e * z[i];
      bed += live ? e * d : 0.f;
    }
    se += be;
    sez += bez;
    sed += bed;
  }
  *se_out = se;
  *sez_out = sez;
  *sed_out = sed;
}

// fp32 -> bf16, round to nearest even (NaN stays NaN), on raw bits so it vectorises.
HALD_CLONES void store_bf16(const float* src, uint16_t* dst, int64_t C) {
#pragma omp simd
  for (int64_t i = 0; i < C; ++i) {
    uint32_t u;
    std::memcpy(&u, &src[i], sizeof(u));
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    dst[i] = nan ? uint16_t(0x7fc0) : uint16_t(rounded);
  }
}

// Generic (float64, float16) versions of the loops above; acc_t is the per-element type.
template <typename acc_t>
void max_sum_generic(const acc_t* z, int64_t C, acc_t* m_out, double* sum_out) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  double s = 0;
  for (int64_t i = 0; i < C; ++i) {
    m = std::max(m, z[i]);
    s += double(z[i]);
  }
  *m_out = m;
  *sum_out = s;
}

// Row buffers, allocated once per parallel chunk.
template <typename acc_t>
struct RowScratch {
  std::vector<acc_t> z, e1, eT;
  std::vector<acc_t> w;        // dense target row (decoded values, or the teacher's exp((t - max) / T))
  std::vector<uint64_t> seen;  // one bit per class: the distinct-id check, O(k) per row
};

// Stored top-k label of row b: validate the ids (range, distinct: a bitset, set and cleared in
// O(k)) and the values, and reduce the sums of TopkSums.
template <typename acc_t>
void gather_topk(const SoftHardArgs& a, RowScratch<acc_t>& s, int64_t b, const acc_t* z, TopkSums<double>* tk) {
  const int64_t C = a.P.C, k = a.P.k;
  if (k == 0) return;  // an empty stored label: ids / values are never read
  const void* ids = a.ids.const_data_ptr();
  const void* vals = a.values.const_data_ptr();
  const float* codebook = a.codebook.defined() ? a.codebook.const_data_ptr<float>() : nullptr;
  uint64_t* seen = s.seen.data();
  auto clear = [&](int64_t upto) {
    for (int64_t j = 0; j < upto; ++j) {
      const int64_t c = load_id(ids, a.id_kind, b * k + j);
      seen[c >> 6] &= ~(uint64_t(1) << (c & 63));
    }
  };
  for (int64_t j = 0; j < k; ++j) {
    const int64_t c = load_id(ids, a.id_kind, b * k + j);
    if (!(c >= 0 && c < C)) {
      clear(j);
      TORCH_CHECK(false, "soft_hard_loss: topk_ids[", b, ", ", j, "] = ", c, " is outside [0, ", C, ")");
    }
    const uint64_t bit = uint64_t(1) << (c & 63);
    if (seen[c >> 6] & bit) {
      clear(j);
      TORCH_CHECK(false, "soft_hard_loss: topk_ids row ", b, " repeats class ", c);
    }
    seen[c >> 6] |= bit;
    const double p = load_value<double>(vals, a.val_kind, b * k + j, codebook);
    if (!(p >= 0.0 && std::isfinite(p))) {
      clear(j + 1);
      TORCH_CHECK(false, "soft_hard_loss: soft label value [", b, ", ", j, "] = ", p,
                  " is not a finite non-negative probability");
    }
    tk->add(p, double(z[c]));
  }
  clear(k);
}

// Dense soft target of row b (probabilities / codes [B, C], or the teacher's logits): the row's
// TopkSums (with k == C), the row w of weights (*w_out: the values themselves when they are fp32,
// else `buf`), and the factor that turns w into q.
template <typename acc_t>
double dense_row(const SoftHardArgs& a, int64_t b, const acc_t* z, double sumz, acc_t* buf, const acc_t** w_out,
                 TopkSums<double>* tk) {
  const LossParams& P = a.P;
  const int64_t C = P.C;
  const void* vals = a.values.const_data_ptr();
  const float* codebook = a.codebook.defined() ? a.codebook.const_data_ptr<float>() : nullptr;
  const bool teacher = P.soft_kind == int32_t(SoftKind::Teacher);
  acc_t* w = buf;
  if (a.val_kind == int32_t(ValKind::F32) && std::is_same_v<acc_t, float>) {
    if (teacher) {
      std::memcpy(w, static_cast<const float*>(vals) + b * C, C * sizeof(float));
    } else {
      w = const_cast<acc_t*>(reinterpret_cast<const acc_t*>(static_cast<const float*>(vals) + b * C));  // read only
    }
  } else {
    for (int64_t i = 0; i < C; ++i) w[i] = load_value<acc_t>(vals, a.val_kind, b * C + i, codebook);
  }
  *w_out = w;
  tk->sz = sumz;
  if (teacher) {
    acc_t mt = -std::numeric_limits<acc_t>::infinity();
    bool nan_or_pinf = false;
    for (int64_t i = 0; i < C; ++i) {
      mt = std::max(mt, w[i]);
      nan_or_pinf |= std::isnan(w[i]) || w[i] == std::numeric_limits<acc_t>::infinity();
    }
    TORCH_CHECK(!nan_or_pinf && std::isfinite(double(mt)), "soft_hard_loss: teacher_logits row ", b,
                " has a NaN or +inf value, or no finite one (-inf masks a class)");
    const acc_t invTt = acc_t(1) / acc_t(P.teacher_temperature);
    double se = 0, sez = 0, sed = 0;
    if constexpr (std::is_same_v<acc_t, float>) {
      teacher_sums(w, z, mt, invTt, C, &se, &sez, &sed);
    } else {
      for (int64_t i = 0; i < C; ++i) {
        const acc_t d = (w[i] - mt) * invTt;
        const bool live = d > -std::numeric_limits<acc_t>::infinity();
        const acc_t e = live ? std::exp(d) : acc_t(0);
        w[i] = e;
        se += double(e);
        sez += double(e) * double(z[i]);
        sed += live ? double(e) * double(d) : 0.0;
      }
    }
    tk->sp = 1;
    tk->spz = sez / se;
    tk->splogp = sed / se - std::log(se);
    return 1.0 / se;
  }
  double bad = 0;
  if constexpr (std::is_same_v<acc_t, float>) {
    float fbad = 0.f;
    dense_sums(w, z, C, &tk->sp, &tk->spz, &fbad);
    bad = fbad;
  } else {
    for (int64_t i = 0; i < C; ++i) {
      bad += (w[i] >= 0 && std::isfinite(double(w[i]))) ? 0 : 1;
      tk->sp += double(w[i]);
      tk->spz += double(w[i]) * double(z[i]);
    }
  }
  if (bad != 0) {
    for (int64_t i = 0; i < C; ++i)
      TORCH_CHECK(w[i] >= acc_t(0) && std::isfinite(double(w[i])), "soft_hard_loss: topk_values[", b, ", ", i,
                  "] = ", double(w[i]), " is not a finite non-negative probability");
  }
  TORCH_CHECK(P.decode != int32_t(Decode::Marginal) || std::abs(tk->sp - 1.0) <= kDenseSumTolerance,
              "soft_hard_loss: topk_values row ", b, " (a dense target) sums to ", tk->sp,
              ", not 1; decode='marginal' takes dense targets as distributions: pass decode='renorm' to normalise "
              "them or decode='truncate' to use them as they are");
  if (P.soft_kl) {
    double e = 0;
    for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
      acc_t be = 0;
      for (int64_t i = c0; i < std::min(C, c0 + kBlock); ++i) be += xlogx(w[i]);
      e += double(be);
    }
    tk->splogp = e;
  }
  return 1.0;
}

template <typename scalar_t>
void run_rows(const SoftHardArgs& a, at::Tensor& loss_rows, at::Tensor& grad) {
  // acc_t: the per-element type; the row's sums and its finish are double.
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const LossParams& P = a.P;
  const int64_t B = a.B, C = P.C, k = P.k;
  const bool dense = P.has_soft && dense_soft(P);
  const int64_t lstride = a.logits.stride(0);
  const scalar_t* logits = a.logits.const_data_ptr<scalar_t>();
  scalar_t* gout = a.compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
  const int64_t gstride = a.compute_grad ? grad.stride(0) : 0;
  acc_t* loss = loss_rows.data_ptr<acc_t>();
  const bool topk = P.has_soft && !dense && k > 0;
  const void* ids = topk ? a.ids.const_data_ptr() : nullptr;
  const void* vals = topk ? a.values.const_data_ptr() : nullptr;
  const float* codebook = a.codebook.defined() ? a.codebook.const_data_ptr<float>() : nullptr;
  const int64_t* ta = a.target_a.defined() ? a.target_a.const_data_ptr<int64_t>() : nullptr;
  const int64_t* tb = a.target_b.defined() ? a.target_b.const_data_ptr<int64_t>() : nullptr;
  const acc_t* lam = a.lam.defined() ? a.lam.const_data_ptr<acc_t>() : nullptr;
  const acc_t invT = acc_t(1.0 / P.temperature);
  const bool same_T = P.temperature == 1.0;

  // Hard-term scale; "mean" divides by the number of rows that are not ignored (0 rows -> term is 0).
  double hard_scale = P.hard_weight * P.hard_red;
  if (P.has_hard && P.hard_mean) {
    int64_t count = 0;
    for (int64_t b = 0; b < B; ++b) count += ta[b] != P.ignore_index;
    hard_scale = P.hard_weight / double(std::max<int64_t>(count, 1));
  }

  const int64_t grain = std::max<int64_t>(1, 32768 / C);
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    RowScratch<acc_t> s;
    s.z.resize(std::is_same_v<scalar_t, acc_t> ? 0 : C);
    s.eT.resize(C);
    if (!(P.has_soft && same_T)) s.e1.resize(C);
    if (dense) s.w.resize(C);
    if (topk) s.seen.assign((C + 63) / 64, 0);
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* row = logits + b * lstride;
      // Pass 1: fp32 view of the row, max and sum.
      const acc_t* z;
      acc_t m;
      RowStats<double> st;
      st.s1 = 1;
      st.sT = 1;
      if constexpr (std::is_same_v<scalar_t, float>) {
        z = row;
      } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
        load_bf16(reinterpret_cast<const uint16_t*>(row), s.z.data(), C);
        z = s.z.data();
      } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
        for (int64_t i = 0; i < C; ++i) s.z[i] = float(row[i]);
        z = s.z.data();
      } else {
        z = row;
      }
      if constexpr (std::is_same_v<acc_t, float>) {
        max_sum_f32(z, C, &m, &st.sumz);
      } else {
        max_sum_generic(z, C, &m, &st.sumz);
      }
      st.m = m;

      // Soft target: gather, validate, reduce. Dense targets leave their row in w, scaled by
      // w_scale into q.
      TopkSums<double> tk;
      double w_scale = 1;
      const acc_t* w = nullptr;
      if (P.has_soft && !dense) {
        gather_topk(a, s, b, z, &tk);
      } else if (dense) {
        w_scale = dense_row(a, b, z, st.sumz, s.w.data(), &w, &tk);
      }

      // Hard target(s).
      bool hard_valid = false;
      int64_t ya = 0, yb = 0;
      double l = 1;
      if (P.has_hard) {
        ya = ta[b];
        hard_valid = ya != P.ignore_index;
        if (hard_valid) {
          TORCH_CHECK(ya >= 0 && ya < C, "soft_hard_loss: hard_target[", b, "] = ", ya, " is outside [0, ", C,
                      ") and is not ignore_index (", P.ignore_index, ")");
          yb = ya;
          if (P.has_pair) {
            yb = tb[b];
            l = lam[b];
            TORCH_CHECK(yb >= 0 && yb < C, "soft_hard_loss: target_b[", b, "] = ", yb, " is outside [0, ", C, ")");
            TORCH_CHECK(l >= 0.0 && l <= 1.0, "soft_hard_loss: mix_lambda[", b, "] = ", l, " is outside [0, 1]");
          }
        }
      }

      // Pass 2: exponentials and their sums.
      const bool useT = P.has_soft, use1 = hard_valid;
      acc_t* eT = s.eT.data();
      acc_t* e1 = (useT && same_T) ? eT : s.e1.data();
      if constexpr (std::is_same_v<acc_t, float>) {
        if (useT && use1 && !same_T) {
          exp_sum2(z, m, invT, e1, eT, C, &st.s1, &st.sT);
        } else if (useT) {
          st.sT = exp_sum(z, m, invT, eT, C);
          st.s1 = st.sT;
        } else if (use1) {
          st.s1 = exp_sum(z, m, 1.f, e1, C);
        }
      } else {
        double s1 = 0, sT = 0;
        for (int64_t i = 0; i < C; ++i) {
          const acc_t d = z[i] - m;
          if (useT) sT += (eT[i] = std::exp(d * invT));
          if (use1 && e1 != eT) s1 += (e1[i] = std::exp(d));
        }
        st.sT = useT ? sT : 1.0;
        st.s1 = use1 ? (e1 == eT ? sT : s1) : 1.0;
      }

      const RowCoeffs<double> r = finish_row<double>(P, st, tk, hard_valid, hard_scale,
                                                     hard_valid ? double(z[ya]) : 0.0,
                                                     hard_valid ? double(z[yb]) : 0.0, l);
      loss[b] = acc_t(r.loss);
      if (!a.compute_grad) continue;

      // Pass 3: gradient. fp32/fp64 rows are written in place and corrected with +=; 16-bit rows
      // are built in an fp32 buffer and rounded once.
      scalar_t* grow = gout + b * gstride;
      acc_t* g;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        g = grow;
      } else {
        g = s.z.data();  // the fp32 logits are no longer needed
      }
      const acc_t sa = acc_t(r.sa), ha = acc_t(r.ha), base = acc_t(r.base);
      const bool two = useT && use1 && e1 != eT;
      if constexpr (std::is_same_v<acc_t, float>) {
        if (two) grad2(g, eT, e1, sa, ha, base, C);
        else if (useT || use1) grad1(g, useT ? eT : e1, sa + ha, base, C);  // one of sa, ha is 0 unless e1 == eT
        else std::fill(g, g + C, base);
      } else {
        for (int64_t i = 0; i < C; ++i)
          g[i] = (useT ? sa * eT[i] : acc_t(0)) + (use1 ? ha * e1[i] : acc_t(0)) + base;
      }
      if (dense) {
        const acc_t cq = acc_t(r.soft_corr * r.q_scale * w_scale);
        if constexpr (std::is_same_v<acc_t, float>) {
          axpy(g, w, cq, C);
        } else {
          for (int64_t i = 0; i < C; ++i) g[i] += cq * w[i];
        }
      } else if (topk) {
        for (int64_t j = 0; j < k; ++j) {
          const int64_t c = load_id(ids, a.id_kind, b * k + j);
          const double p = load_value<double>(vals, a.val_kind, b * k + j, codebook);
          g[c] += acc_t(r.soft_corr * (r.q_scale * p - r.u));
        }
      }
      if (hard_valid) {
        g[ya] += acc_t(r.corr_a);
        g[yb] += acc_t(r.corr_b);
      }
      if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
        store_bf16(g, reinterpret_cast<uint16_t*>(grow), C);
      } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
        for (int64_t i = 0; i < C; ++i) grow[i] = c10::Half(g[i]);
      }
    }
  });
}

void soft_hard_loss_cpu_kernel(const SoftHardArgs& a, at::Tensor& loss_rows, at::Tensor& grad) {
  if (a.B == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.logits.scalar_type(), "soft_hard_loss_cpu",
                                  [&] { run_rows<scalar_t>(a, loss_rows, grad); });
}

// grad[b, :] *= grad_rows[b]; nothing is touched when every factor is exactly 1 (a reduced loss's
// backward), rows whose factor is 1 are skipped otherwise. 16-bit rows are scaled in fp32.
void soft_hard_loss_scale_cpu(at::Tensor& grad, const at::Tensor& grad_rows) {
  const at::Tensor f = grad_rows.to(at::kDouble).contiguous();
  const double* fp = f.const_data_ptr<double>();
  const int64_t B = grad.size(0), C = grad.size(1);
  bool all_one = true;
  for (int64_t b = 0; b < B && all_one; ++b) all_one = fp[b] == 1.0;
  if (all_one) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "soft_hard_loss_scale_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    scalar_t* g = grad.data_ptr<scalar_t>();
    const int64_t stride = grad.stride(0);
    at::parallel_for(0, B, std::max<int64_t>(1, 32768 / C), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (fp[b] == 1.0) continue;
        const acc_t s = acc_t(fp[b]);
        scalar_t* row = g + b * stride;
        for (int64_t i = 0; i < C; ++i) row[i] = scalar_t(acc_t(row[i]) * s);
      }
    });
  });
}

void cpu_loss(const c10::OperatorHandle&, torch::jit::Stack* s) { soft_hard_loss_call(&soft_hard_loss_cpu_kernel, s); }
void cpu_loss_inplace(const c10::OperatorHandle&, torch::jit::Stack* s) {
  soft_hard_loss_inplace_call(&soft_hard_loss_cpu_kernel, s);
}
void cpu_scale(const c10::OperatorHandle&, torch::jit::Stack* s) {
  soft_hard_loss_scale_call(&soft_hard_loss_scale_cpu, s);
}

}  // namespace
}  // namespace hald

TORCH_LIBRARY_IMPL(hald, CPU, m) {
  m.impl("soft_hard_loss", torch::CppFunction::makeFromBoxedFunction<&hald::cpu_loss>());
  m.impl("soft_hard_loss_", torch::CppFunction::makeFromBoxedFunction<&hald::cpu_loss_inplace>());
  m.impl("_soft_hard_loss_scale_", torch::CppFunction::makeFromBoxedFunction<&hald::cpu_scale>());
}
