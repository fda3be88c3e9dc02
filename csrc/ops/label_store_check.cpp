// hald::label_store_check: the value checks of a label store's arrays in one native pass over the rows
// (LabelStore.open runs it on every file it opens; hald_ext/reference/label_store_check.py says the
// same thing in plain loops, and the tests compare the two). Per row, in the order the errors are reported:
//   1 a class id out of [0, C)        2 a class id repeated within a row's top-k
//   3 a box reaching outside the image (y + h or x + w over 65536: rounding allows one code)
//   4 a box of zero height or width   5 a CutMix partner out of [-1, num_images)
//   6 a CutMix lambda not finite or outside [0, 1]
//   7 a CutMix box reaching outside the crop (zero-size CutMix boxes are allowed: nothing pasted)
// Returns [code, flat row, offending value] of the first bad row (code 0: all good). CPU only: a store
// is memory-mapped on the host.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <mutex>

namespace hald {
namespace {

using Result = std::array<int64_t, 3>;  // code, row, value

constexpr int64_t kBoxMax = 65536;

template <typename id_t>
Result check_ids(const id_t* ids, int64_t k, int64_t C, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const id_t* row = ids + r * k;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t v = int64_t(row[i]);
      if (v < 0 || v >= C) return {1, r, v};
      for (int64_t j = 0; j < i; ++j) {
        if (row[j] == row[i]) return {2, r, v};
      }
    }
  }
  return {0, 0, 0};
}

Result check_boxes(const uint16_t* b, int64_t r0, int64_t r1, bool allow_empty, int code_outside, int code_empty) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* q = b + 4 * r;
    const int64_t ys = int64_t(q[0]) + q[2], xs = int64_t(q[1]) + q[3];
    if (ys > kBoxMax || xs > kBoxMax) return {code_outside, r, std::max(ys, xs)};
    if (!allow_empty && (q[2] == 0 || q[3] == 0)) return {code_empty, r, 0};
  }
  return {0, 0, 0};
}

// The fast pass: branch-free reductions the compiler vectorises (no early exit), one chunk of rows at a
// time; only when one says something is wrong does the exact pass above look for the first bad row.
template <typename id_t, int K>
bool ids_ok_k(const id_t* ids, int64_t r0, int64_t r1, int64_t C) {
  bool bad = false;
  for (int64_t r = r0; r < r1; ++r) {
    const id_t* row = ids + r * K;
    for (int i = 0; i < K; ++i) {
      bad |= int64_t(row[i]) < 0 || int64_t(row[i]) >= C;
      for (int j = 0; j < i; ++j) bad |= row[i] == row[j];
    }
  }
  return !bad;
}

template <typename id_t>
bool ids_ok(const id_t* ids, int64_t k, int64_t r0, int64_t r1, int64_t C) {
  switch (k) {
    case 1: return ids_ok_k<id_t, 1>(ids, r0, r1, C);
    case 2: return ids_ok_k<id_t, 2>(ids, r0, r1, C);
    case 3: return ids_ok_k<id_t, 3>(ids, r0, r1, C);
    case 4: return ids_ok_k<id_t, 4>(ids, r0, r1, C);
    case 5: return ids_ok_k<id_t, 5>(ids, r0, r1, C);
    case 8: return ids_ok_k<id_t, 8>(ids, r0, r1, C);
    case 10: return ids_ok_k<id_t, 10>(ids, r0, r1, C);
    default: return check_ids(ids, k, C, r0, r1)[0] == 0;
  }
}

bool boxes_ok(const uint16_t* b, int64_t r0, int64_t r1, bool allow_empty) {
  int64_t over = 0;
  uint16_t small = 1;
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* q = b + 4 * r;
    const int64_t ys = int64_t(q[0]) + q[2], xs = int64_t(q[1]) + q[3];
    over = std::max(over, std::max(ys, xs));
    small = std::min(small, std::min(q[2], q[3]));
  }
  return over <= kBoxMax && (allow_empty || small > 0);
}

// Whether every row of [0, rows) passes ok(r0, r1), in parallel chunks.
template <typename F>
bool all_ok(int64_t rows, F ok) {
  std::atomic<bool> good{true};
  at::parallel_for(0, rows, 1 << 15, [&](int64_t r0, int64_t r1) {
    if (!ok(r0, r1)) good.store(false, std::memory_order_relaxed);
  });
  return good.load();
}

Result first_of(const Result& a, const Result& b) {
  if (a[0] == 0) return b;
  if (b[0] == 0) return a;
  return (b[1] < a[1] || (b[1] == a[1] && b[0] < a[0])) ? b : a;
}

// Runs fn(r0, r1) -> Result over [0, rows) in parallel; the first bad row wins.
template <typename F>
Result over_rows(int64_t rows, F fn) {
  Result best{0, 0, 0};
  std::mutex m;
  at::parallel_for(0, rows, 1 << 14, [&](int64_t r0, int64_t r1) {
    const Result got = fn(r0, r1);
    if (got[0] != 0) {
      std::lock_guard<std::mutex> lock(m);
      best = first_of(best, got);
    }
  });
  return best;
}

void require_cpu_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "label_store_check: ", name, " must be on the CPU, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), "label_store_check: ", name, " must be contiguous");
}

std::vector<int64_t> label_store_check(const std::optional<at::Tensor>& topk_ids, int64_t num_classes,
                                       const at::Tensor& boxes, const std::optional<at::Tensor>& mix_partner,
                                       int64_t num_images, const std::optional<at::Tensor>& mix_lambda,
                                       const std::optional<at::Tensor>& mix_boxes) {
  Result res{0, 0, 0};
  if (topk_ids.has_value() && topk_ids->numel() > 0) {
    const at::Tensor& ids = *topk_ids;
    require_cpu_contiguous(ids, "topk_ids");
    TORCH_CHECK(ids.dim() == 2, "label_store_check: topk_ids must be [rows, k], got ", ids.sizes());
    const int64_t rows = ids.size(0), k = ids.size(1);
    switch (ids.scalar_type()) {
      case at::kUInt16: {
        const auto* p = static_cast<const uint16_t*>(ids.const_data_ptr());
        if (!all_ok(rows, [&](int64_t a, int64_t b) { return ids_ok(p, k, a, b, num_classes); })) {
          res = over_rows(rows, [&](int64_t a, int64_t b) { return check_ids(p, k, num_classes, a, b); });
        }
        break;
      }
      case at::kInt: {
        const auto* p = ids.const_data_ptr<int32_t>();
        if (!all_ok(rows, [&](int64_t a, int64_t b) { return ids_ok(p, k, a, b, num_classes); })) {
          res = over_rows(rows, [&](int64_t a, int64_t b) { return check_ids(p, k, num_classes, a, b); });
        }
        break;
      }
      default: TORCH_CHECK(false, "label_store_check: topk_ids must be uint16 or int32, got ", ids.scalar_type());
    }
    if (res[0] != 0) return {res[0], res[1], res[2]};
  }
  const auto box_pass = [&](const at::Tensor& b, const char* name, bool allow_empty, int outside, int empty) {
    if (b.numel() == 0) return Result{0, 0, 0};
    require_cpu_contiguous(b, name);
    TORCH_CHECK(b.scalar_type() == at::kUInt16 && b.dim() == 2 && b.size(1) == 4, "label_store_check: ", name,
                " must be uint16 [rows, 4], got ", b.scalar_type(), " ", b.sizes());
    const auto* p = static_cast<const uint16_t*>(b.const_data_ptr());
    if (all_ok(b.size(0), [&](int64_t a, int64_t e) { return boxes_ok(p, a, e, allow_empty); })) return Result{0, 0, 0};
    return over_rows(b.size(0), [&](int64_t a, int64_t e) { return check_boxes(p, a, e, allow_empty, outside, empty); });
  };
  res = box_pass(boxes, "boxes", false, 3, 4);
  if (res[0] != 0) return {res[0], res[1], res[2]};
  if (mix_partner.has_value() && mix_partner->numel() > 0) {
    const at::Tensor& mp = *mix_partner;
    require_cpu_contiguous(mp, "mix_partner");
    TORCH_CHECK(mp.scalar_type() == at::kInt, "label_store_check: mix_partner must be int32, got ", mp.scalar_type());
    const int32_t* p = mp.const_data_ptr<int32_t>();
    const bool fine = all_ok(mp.numel(), [&](int64_t a, int64_t e) {
      int32_t lo = -1, hi = -1;
      for (int64_t r = a; r < e; ++r) {
        lo = std::min(lo, p[r]);
        hi = std::max(hi, p[r]);
      }
      return lo >= -1 && hi < num_images;
    });
    if (!fine) res = over_rows(mp.numel(), [&](int64_t a, int64_t e) {
      for (int64_t r = a; r < e; ++r) {
        if (p[r] < -1 || p[r] >= num_images) return Result{5, r, p[r]};
      }
      return Result{0, 0, 0};
    });
    if (res[0] != 0) return {res[0], res[1], res[2]};
  }
  if (mix_lambda.has_value() && mix_lambda->numel() > 0) {
    const at::Tensor& ml = *mix_lambda;
    require_cpu_contiguous(ml, "mix_lambda");
    TORCH_CHECK(ml.scalar_type() == at::kFloat, "label_store_check: mix_lambda must be float32, got ",
                ml.scalar_type());
    const float* p = ml.const_data_ptr<float>();
    const bool fine = all_ok(ml.numel(), [&](int64_t a, int64_t e) {
      bool bad = false;
      for (int64_t r = a; r < e; ++r) bad |= !(p[r] >= 0.f && p[r] <= 1.f);  // NaN fails both; inf fails one
      return !bad;
    });
    if (!fine) res = over_rows(ml.numel(), [&](int64_t a, int64_t e) {
      for (int64_t r = a; r < e; ++r) {
        if (!(std::isfinite(p[r]) && p[r] >= 0.f && p[r] <= 1.f)) return Result{6, r, 0};
      }
      return Result{0, 0, 0};
    });
    if (res[0] != 0) return {res[0], res[1], res[2]};
  }
  if (mix_boxes.has_value()) {
    res = box_pass(*mix_boxes, "mix_boxes", true, 7, 7);
    if (res[0] != 0) return {res[0], res[1], res[2]};
  }
  return {0, 0, 0};
}

}  // namespace
}  // namespace hald

TORCH_LIBRARY_FRAGMENT(hald, m) {
  m.def("label_store_check(Tensor? topk_ids, int num_classes, Tensor boxes, Tensor? mix_partner, int num_images, "
        "Tensor? mix_lambda, Tensor? mix_boxes) -> int[]");
}

TORCH_LIBRARY_IMPL(hald, CPU, m) { m.impl("label_store_check", &hald::label_store_check); }
