// Per-row math of the label codec, shared by the CPU and CUDA kernels.
//
// Encode: the k largest entries of a row (ties go to the lower class id, so every backend picks the
// same ids), their probabilities (softmax(z / T) for logits, or the input as is), and a code per
// probability: the number of quantiser thresholds <= p (thresholds sorted, one fewer than codes), so
// the code's codebook entry is the reconstruction the quantiser chose for p.
// Decode: codes -> codebook entries; dense decode builds the C-wide target of METHOD.md section 3.
#pragma once

#include <cmath>
#include <cstdint>

#include "hald/soft_hard_math.h"  // HALD_HD, Decode

namespace hald {

// Largest k the top-k encoder keeps per row (a register / local-memory list per thread on CUDA);
// larger k are ranked by a sort and take their codes from the full-width encoder (label_codec.cpp).
constexpr int kMaxEncodeK = 64;

// Bad-input bits the encoders OR into a status word while they read a row (no extra pass, no
// temporaries; the host reads the word once after the kernel and raises a named error).
enum EncodeStatus : int32_t {
  kBadNaN = 1,        // a NaN score
  kBadInf = 2,        // an infinite logit
  kBadNegative = 4,   // a negative probability
  kBadAboveOne = 8,   // a probability > 1
  kBadRowSum = 16,    // a probability row whose sum is off 1 by more than kRowSumTolerance
};
constexpr double kRowSumTolerance = 0.02;

template <typename acc_t>
HALD_HD int32_t score_status(acc_t x, bool from_logits) {
  if (x != x) return kBadNaN;
  if (from_logits) return (x == acc_t(INFINITY) || x == acc_t(-INFINITY)) ? kBadInf : 0;
  return (x < acc_t(0) ? kBadNegative : 0) | (x > acc_t(1) ? kBadAboveOne : 0);
}

// Strict order of the top-k selection: larger value first, then lower class id.
template <typename acc_t>
HALD_HD bool ranks_before(acc_t va, int32_t ia, acc_t vb, int32_t ib) {
  return va > vb || (va == vb && ia < ib);
}

// A sorted (best first) list of at most k (value, id) pairs; `offer` keeps it the k best seen.
template <typename acc_t>
struct TopkList {
  acc_t v[kMaxEncodeK];
  int32_t id[kMaxEncodeK];
  int n = 0;
  int k = 0;
  HALD_HD void reset(int k_) {
    n = 0;
    k = k_;
  }
  HALD_HD void offer(acc_t x, int32_t c) {
    if (n == k && !ranks_before(x, c, v[k - 1], id[k - 1])) return;  // the common case: one compare
    int pos = n < k ? n++ : k - 1;
    while (pos > 0 && ranks_before(x, c, v[pos - 1], id[pos - 1])) {
      v[pos] = v[pos - 1];
      id[pos] = id[pos - 1];
      --pos;
    }
    v[pos] = x;
    id[pos] = c;
  }
};

// Code of probability p: the count of thresholds <= p (upper bound by binary search).
HALD_HD int32_t encode_code(float p, const float* thresholds, int32_t n_thresholds) {
  int32_t lo = 0, hi = n_thresholds;
  while (lo < hi) {
    const int32_t mid = (lo + hi) >> 1;
    if (thresholds[mid] <= p) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Value of the classes a top-k label does not store, and the scale of the stored ones, per decode mode.
struct DenseDecodeRow {
  float scale;  // stored entry j decodes to scale * p_j
  float other;  // every other class
};

HALD_HD DenseDecodeRow dense_decode_row(float sum_p, int64_t C, int64_t k, int32_t decode) {
  DenseDecodeRow r{1.0f, 0.0f};
  if (decode == int32_t(Decode::Marginal)) {
    if (C > k) r.other = (sum_p < 1.0f ? 1.0f - sum_p : 0.0f) / float(C - k);
  } else if (decode == int32_t(Decode::Renorm)) {
    r.scale = sum_p > 0.0f ? 1.0f / sum_p : 0.0f;
  }
  return r;
}

}  // namespace hald
