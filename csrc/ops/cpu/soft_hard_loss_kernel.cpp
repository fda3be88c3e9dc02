// CPU kernel of the fused soft-KL / hard-CE loss.
//
// Soft targets: a stored top-k label (k gathers per row), or a dense one (probabilities / codes
// [B, C], or the teacher's logits with their own temperature): the dense row is decoded into a
// per-thread row buffer (the teacher's as exp((t - max t) / T_t)), reduced with the logits in the
// first pass and added to the gradient in the last one; nothing [B, C] beyond the gradient.
//
// Rows run in parallel (at::parallel_for). Each row is touched three times, always from L1/L2:
//   1. load (converting 16-bit logits to fp32) + max + sum,
//   2. exp((z - m)/T) and exp(z - m) into row buffers + their sums,
//   3. gradient write from the buffers, then the few stored classes / targets are corrected in fp32.
// The float loops are plain loops with `omp simd` reductions and a polynomial exp, compiled for
// AVX-512, AVX2 and baseline x86-64 (target_clones picks one when the library loads).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../soft_hard_loss.h"
#include "hald/cpu_simd.h"


namespace hald {
namespace {

HALD_CLONES void max_sum_f32(const float* z, int64_t C, float* m_out, float* sum_out) {
  float m = -std::numeric_limits<float>::infinity(), s = 0.f;
#pragma omp simd reduction(max : m) reduction(+ : s)
  for (int64_t i = 0; i < C; ++i) {
    m = z[i] > m ? z[i] : m;
    s += z[i];
  }
  *m_out = m;
  *sum_out = s;
}

// bf16 -> fp32 is a 16-bit shift; done on raw bits so it vectorises.
HALD_CLONES void load_bf16(const uint16_t* src, float* dst, int64_t C, float* m_out, float* sum_out) {
  float m = -std::numeric_limits<float>::infinity(), s = 0.f;
#pragma omp simd reduction(max : m) reduction(+ : s)
  for (int64_t i = 0; i < C; ++i) {
    const uint32_t bits = uint32_t(src[i]) << 16;
    float v;
    std::memcpy(&v, &bits, sizeof(v));
    dst[i] = v;
    m = v > m ? v : m;
    s += v;
  }
  *m_out = m;
  *sum_out = s;
}

void load_half(const c10::Half* src, float* dst, int64_t C, float* m_out, float* sum_out) {
  for (int64_t i = 0; i < C; ++i) dst[i] = float(src[i]);
  max_sum_f32(dst, C, m_out, sum_out);
}

// e_i = exp((z_i - m) * scale); returns sum e_i.
HALD_CLONES float exp_sum(const float* z, float m, float scale, float* e, int64_t C) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < C; ++i) {
    const float v = exp_nonpos((z[i] - m) * scale);
    e[i] = v;
    s += v;
  }
  return s;
}

HALD_CLONES void exp_sum2(const float* z, float m, float invT, float* e1, float* eT, int64_t C, float* s1_out,
                          float* sT_out) {
  float s1 = 0.f, sT = 0.f;
#pragma omp simd reduction(+ : s1, sT)
  for (int64_t i = 0; i < C; ++i) {
    const float d = z[i] - m;
    const float a = exp_nonpos(d), b = exp_nonpos(d * invT);
    e1[i] = a;
    eT[i] = b;
    s1 += a;
    sT += b;
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

// Sums of a dense target row w against the logits z: sum w, sum w z (vectorised); min w and
// whether any w is NaN / inf are folded into `bad` (0 when every entry is finite and >= 0).
HALD_CLONES void dense_sums(const float* w, const float* z, int64_t C, float* sw_out, float* swz_out, float* bad_out) {
  float sw = 0.f, swz = 0.f, bad = 0.f;
#pragma omp simd reduction(+ : sw, swz, bad)
  for (int64_t i = 0; i < C; ++i) {
    const float v = w[i];
    sw += v;
    swz += v * z[i];
    bad += (v >= 0.f && v <= 3.4e38f) ? 0.f : 1.f;  // false for NaN, inf and negatives
  }
  *sw_out = sw;
  *swz_out = swz;
  *bad_out = bad;
}

// Teacher row: d_i = (t_i - mt) * invT, e_i = exp(d_i) written over t; returns sum e, sum e z, sum e d.
HALD_CLONES void teacher_sums(float* t, const float* z, float mt, float invT, int64_t C, float* se_out,
                              float* sez_out, float* sed_out) {
  float se = 0.f, sez = 0.f, sed = 0.f;
#pragma omp simd reduction(+ : se, sez, sed)
  for (int64_t i = 0; i < C; ++i) {
    const float d = (t[i] - mt) * invT;
    const float e = exp_nonpos(d);
    t[i] = e;
    se += e;
    sez += e * z[i];
    sed += e * d;
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

// Row buffers, allocated once per parallel chunk.
template <typename acc_t>
struct RowScratch {
  std::vector<acc_t> z, e1, eT;
  std::vector<acc_t> w;       // dense target row (probabilities, or the teacher's exp((t - max) / T))
  std::vector<uint8_t> seen;  // distinct-id check for large k
};

// Stored top-k label of row b: validate the ids and values, reduce the sums of TopkSums.
template <typename acc_t>
void gather_topk(const SoftHardArgs& a, RowScratch<acc_t>& s, int64_t b, const acc_t* z, TopkSums<acc_t>* tk) {
  const int64_t C = a.P.C, k = a.P.k;
  const void* ids = a.ids.const_data_ptr();
  const void* vals = a.values.const_data_ptr();
  const float* codebook = a.codebook.defined() ? a.codebook.const_data_ptr<float>() : nullptr;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t c = load_id(ids, a.id_kind, b * k + j);
    TORCH_CHECK(c >= 0 && c < C, "soft_hard_loss: topk_ids[", b, ", ", j, "] = ", c, " is outside [0, ", C, ")");
    const acc_t p = load_value<acc_t>(vals, a.val_kind, b * k + j, codebook);
    TORCH_CHECK(p >= acc_t(0) && std::isfinite(double(p)), "soft_hard_loss: soft label value [", b, ", ", j,
                "] = ", double(p), " is not a finite non-negative probability");
    tk->add(p, z[c]);
  }
  // Distinct ids (the decode and the single write per class rely on it).
  if (k > 16) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t c = load_id(ids, a.id_kind, b * k + j);
      const bool dup = s.seen[c];
      s.seen[c] = 1;
      if (dup) {
        for (int64_t t = 0; t < k; ++t) s.seen[load_id(ids, a.id_kind, b * k + t)] = 0;
        TORCH_CHECK(false, "soft_hard_loss: topk_ids row ", b, " repeats class ", c);
      }
    }
    for (int64_t j = 0; j < k; ++j) s.seen[load_id(ids, a.id_kind, b * k + j)] = 0;
  } else {
    for (int64_t j = 1; j < k; ++j) {
      const int64_t c = load_id(ids, a.id_kind, b * k + j);
      for (int64_t t = 0; t < j; ++t)
        TORCH_CHECK(load_id(ids, a.id_kind, b * k + t) != c, "soft_hard_loss: topk_ids row ", b, " repeats class ", c);
    }
  }
}

// Dense soft target of row b (probabilities / codes [B, C], or the teacher's logits): writes w [C]
// and the row's TopkSums (with k == C); returns the factor that turns w into q.
template <typename acc_t>
acc_t dense_row(const SoftHardArgs& a, int64_t b, const acc_t* z, acc_t sumz, acc_t* w, TopkSums<acc_t>* tk) {
  const LossParams& P = a.P;
  const int64_t C = P.C;
  const void* vals = a.values.const_data_ptr();
  const float* codebook = a.codebook.defined() ? a.codebook.const_data_ptr<float>() : nullptr;
  // Row b as acc_t (fp32 loads are a copy; 16-bit floats and codes are decoded).
  if (a.val_kind == int32_t(ValKind::F32) && std::is_same_v<acc_t, float>) {
    std::memcpy(w, static_cast<const float*>(vals) + b * C, C * sizeof(float));
  } else {
    for (int64_t i = 0; i < C; ++i) w[i] = load_value<acc_t>(vals, a.val_kind, b * C + i, codebook);
  }
  const bool teacher = P.soft_kind == int32_t(SoftKind::Teacher);
  acc_t bad = 0;
  if (teacher) {
    acc_t mt = -std::numeric_limits<acc_t>::infinity(), st = 0;
    for (int64_t i = 0; i < C; ++i) {
      mt = std::max(mt, w[i]);
      st += w[i];
    }
    TORCH_CHECK(std::isfinite(double(mt)) && !std::isnan(double(st)), "soft_hard_loss: teacher_logits row ", b,
                " has a NaN or infinite value (or no finite one)");
    const acc_t invTt = acc_t(1) / acc_t(P.teacher_temperature);
    acc_t se = 0, sez = 0, sed = 0;
    if constexpr (std::is_same_v<acc_t, float>) {
      teacher_sums(w, z, mt, invTt, C, &se, &sez, &sed);
    } else {
      for (int64_t i = 0; i < C; ++i) {
        const acc_t d = (w[i] - mt) * invTt;
        const acc_t e = std::exp(d);
        w[i] = e;
        se += e;
        sez += e * z[i];
        sed += e * d;
      }
    }
    tk->sp = 1;
    tk->spz = sez / se;
    tk->sz = sumz;
    tk->splogp = sed / se - std::log(se);
    return acc_t(1) / se;
  }
  if constexpr (std::is_same_v<acc_t, float>) {
    dense_sums(w, z, C, &tk->sp, &tk->spz, &bad);
  } else {
    for (int64_t i = 0; i < C; ++i) {
      bad += (w[i] >= 0 && std::isfinite(w[i])) ? 0 : 1;
      tk->sp += w[i];
      tk->spz += w[i] * z[i];
    }
  }
  if (bad != acc_t(0)) {
    for (int64_t i = 0; i < C; ++i)
      TORCH_CHECK(w[i] >= acc_t(0) && std::isfinite(double(w[i])), "soft_hard_loss: topk_values[", b, ", ", i,
                  "] = ", double(w[i]), " is not a finite non-negative probability");
  }
  TORCH_CHECK(P.decode != int32_t(Decode::Marginal) || std::abs(double(tk->sp) - 1.0) <= kDenseSumTolerance,
              "soft_hard_loss: topk_values row ", b, " (a dense target) sums to ", double(tk->sp),
              ", not 1; decode='marginal' takes dense targets as distributions: pass decode='renorm' to normalise "
              "them or decode='truncate' to use them as they are");
  tk->sz = sumz;
  if (P.soft_kl) {
    acc_t e = 0;
    for (int64_t i = 0; i < C; ++i) e += xlogx(w[i]);
    tk->splogp = e;
  }
  return 1;
}

template <typename scalar_t>
void run_rows(const SoftHardArgs& a, at::Tensor& loss_rows, at::Tensor& grad) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const LossParams& P = a.P;
  const int64_t B = a.B, C = P.C, k = P.k;
  const bool dense = P.has_soft && dense_soft(P);
  const int64_t lstride = a.logits.stride(0);
  const scalar_t* logits = a.logits.const_data_ptr<scalar_t>();
  scalar_t* gout = a.compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
  const int64_t gstride = a.compute_grad ? grad.stride(0) : 0;
  acc_t* loss = loss_rows.data_ptr<acc_t>();
  const void* ids = P.has_soft && !dense ? a.ids.const_data_ptr() : nullptr;
  const void* vals = P.has_soft && !dense ? a.values.const_data_ptr() : nullptr;
  const float* codebook = a.codebook.defined() ? a.codebook.const_data_ptr<float>() : nullptr;
  const int64_t* ta = a.target_a.defined() ? a.target_a.const_data_ptr<int64_t>() : nullptr;
  const int64_t* tb = a.target_b.defined() ? a.target_b.const_data_ptr<int64_t>() : nullptr;
  const acc_t* lam = a.lam.defined() ? a.lam.const_data_ptr<acc_t>() : nullptr;
  const acc_t T = acc_t(P.temperature), invT = acc_t(1) / T;
  const bool same_T = P.temperature == 1.0f;

  // Hard-term scale; "mean" divides by the number of rows that are not ignored (0 rows -> term is 0).
  acc_t hard_scale = acc_t(P.hard_weight) * acc_t(P.hard_red);
  if (P.has_hard && P.hard_mean) {
    int64_t count = 0;
    for (int64_t b = 0; b < B; ++b) count += ta[b] != P.ignore_index;
    hard_scale = acc_t(P.hard_weight) / acc_t(std::max<int64_t>(count, 1));
  }

  const int64_t grain = std::max<int64_t>(1, 32768 / C);
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    RowScratch<acc_t> s;
    s.z.resize(std::is_same_v<scalar_t, acc_t> ? 0 : C);
    s.e1.resize(C);
    s.eT.resize(C);
    if (dense) s.w.resize(C);
    if (k > 16 && !dense) s.seen.assign(C, 0);
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* row = logits + b * lstride;
      // Pass 1: fp32 view of the row, max and sum.
      const acc_t* z;
      RowStats<acc_t> st;
      st.s1 = 1;
      st.sT = 1;
      if constexpr (std::is_same_v<scalar_t, float>) {
        max_sum_f32(row, C, &st.m, &st.sumz);
        z = row;
      } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
        load_bf16(reinterpret_cast<const uint16_t*>(row), s.z.data(), C, &st.m, &st.sumz);
        z = s.z.data();
      } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
        load_half(row, s.z.data(), C, &st.m, &st.sumz);
        z = s.z.data();
      } else {
        st.m = -std::numeric_limits<acc_t>::infinity();
        st.sumz = 0;
        for (int64_t i = 0; i < C; ++i) {
          st.m = std::max<acc_t>(st.m, row[i]);
          st.sumz += row[i];
        }
        z = row;
      }

      // Soft target: gather, validate, reduce. Dense targets leave their row in s.w, scaled by
      // w_scale into q.
      TopkSums<acc_t> tk;
      acc_t w_scale = 1;
      if (P.has_soft && !dense) {
        gather_topk(a, s, b, z, &tk);
      } else if (dense) {
        w_scale = dense_row(a, b, z, st.sumz, s.w.data(), &tk);
      }

      // Hard target(s).
      bool hard_valid = false;
      int64_t ya = 0, yb = 0;
      acc_t l = 1;
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
            TORCH_CHECK(l >= acc_t(0) && l <= acc_t(1), "soft_hard_loss: mix_lambda[", b, "] = ", double(l),
                        " is outside [0, 1]");
          }
        }
      }

      // Pass 2: exponentials and their sums.
      const bool useT = P.has_soft, use1 = hard_valid;
      acc_t* eT = s.eT.data();
      acc_t* e1 = (useT && same_T) ? eT : s.e1.data();
      if constexpr (std::is_same_v<acc_t, float>) {
        if (useT && use1 && !same_T) {
          exp_sum2(z, st.m, invT, e1, eT, C, &st.s1, &st.sT);
        } else if (useT) {
          st.sT = exp_sum(z, st.m, invT, eT, C);
          st.s1 = st.sT;
        } else if (use1) {
          st.s1 = exp_sum(z, st.m, 1.f, e1, C);
        }
      } else {
        acc_t s1 = 0, sT = 0;
        for (int64_t i = 0; i < C; ++i) {
          const acc_t d = z[i] - st.m;
          if (useT) sT += (eT[i] = std::exp(d * invT));
          if (use1 && e1 != eT) s1 += (e1[i] = std::exp(d));
        }
        st.sT = useT ? sT : acc_t(1);
        st.s1 = use1 ? (e1 == eT ? sT : s1) : acc_t(1);
      }

      const RowCoeffs<acc_t> r = finish_row<acc_t>(P, st, tk, hard_valid, hard_scale, hard_valid ? z[ya] : acc_t(0),
                                                   hard_valid ? z[yb] : acc_t(0), l);
      loss[b] = r.loss;
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
      const bool two = useT && use1 && e1 != eT;
      if constexpr (std::is_same_v<acc_t, float>) {
        if (two) grad2(g, eT, e1, r.sa, r.ha, r.base, C);
        else if (useT || use1) grad1(g, useT ? eT : e1, r.sa + r.ha, r.base, C);
        else std::fill(g, g + C, r.base);
      } else {
        for (int64_t i = 0; i < C; ++i)
          g[i] = (useT ? r.sa * eT[i] : acc_t(0)) + (use1 ? r.ha * e1[i] : acc_t(0)) + r.base;
      }
      if (dense) {
        const acc_t cq = r.soft_corr * r.q_scale * w_scale;
        if constexpr (std::is_same_v<acc_t, float>) {
          axpy(g, s.w.data(), cq, C);
        } else {
          for (int64_t i = 0; i < C; ++i) g[i] += cq * s.w[i];
        }
      } else if (P.has_soft) {
        for (int64_t j = 0; j < k; ++j) {
          const int64_t c = load_id(ids, a.id_kind, b * k + j);
          const acc_t p = load_value<acc_t>(vals, a.val_kind, b * k + j, codebook);
          g[c] += r.soft_corr * (r.q_scale * p - r.u);
        }
      }
      if (hard_valid) {
        g[ya] += r.corr_a;
        g[yb] += r.corr_b;
      }
      if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
        store_bf16(g, reinterpret_cast<uint16_t*>(grow), C);
      } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
        for (int64_t i = 0; i < C; ++i) grow[i] = c10::Half(g[i]);
      }
    }
  });
}

}  // namespace

void soft_hard_loss_cpu_kernel(const SoftHardArgs& a, at::Tensor& loss_rows, at::Tensor& grad) {
  if (a.B == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.logits.scalar_type(), "soft_hard_loss_cpu",
                                  [&] { run_rows<scalar_t>(a, loss_rows, grad); });
}

}  // namespace hald

HALD_REGISTER_SOFT_HARD(CPU, hald::soft_hard_loss_cpu_kernel)
