// Shared host-side pieces of the soft_hard_loss op: validated arguments and the backend entry points.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

#include "hald/soft_hard_math.h"
#include "hald/typed_load.h"

namespace hald {

// Arguments after validation: every tensor is on the logits' device, side inputs are contiguous,
// and the row math's constants are in `P`.
struct SoftHardArgs {
  LossParams P;
  at::Tensor logits;    // [B, C], stride(1) == 1
  at::Tensor ids;       // [B, k] contiguous (undefined without a soft term)
  at::Tensor values;    // [B, k] contiguous
  at::Tensor codebook;  // fp32 [256] or [65536], or undefined
  at::Tensor target_a;  // int64 [B] or undefined
  at::Tensor target_b;  // int64 [B] or undefined
  at::Tensor lam;       // acc dtype [B] or undefined
  int32_t id_kind = 0;
  int32_t val_kind = 0;
  int64_t B = 0;
  bool compute_grad = true;
};

SoftHardArgs prepare_soft_hard(const at::Tensor& logits, const std::optional<at::Tensor>& topk_ids,
                               const std::optional<at::Tensor>& topk_values, const std::optional<at::Tensor>& target_a,
                               const std::optional<at::Tensor>& target_b, const std::optional<at::Tensor>& mix_lambda,
                               const std::optional<at::Tensor>& codebook, double temperature, double soft_weight,
                               double hard_weight, double label_smoothing, c10::string_view decode,
                               c10::string_view soft_loss, bool hinton, c10::string_view reduction,
                               int64_t ignore_index, bool compute_grad, bool inplace);

// Backend kernels: fill loss_rows [B] (acc dtype) and, when a.compute_grad, grad [B, C] (which may
// alias a.logits for the in-place variant).
void soft_hard_loss_cpu_kernel(const SoftHardArgs& a, at::Tensor& loss_rows, at::Tensor& grad);
void soft_hard_loss_cuda_kernel(const SoftHardArgs& a, at::Tensor& loss_rows, at::Tensor& grad);

using SoftHardKernel = void (*)(const SoftHardArgs&, at::Tensor&, at::Tensor&);

// Out-of-place op: returns (per-row loss, gradient). The per-row losses already carry the
// reduction's factor, so the reduced loss is their sum.
std::tuple<at::Tensor, at::Tensor> soft_hard_loss_impl(
    SoftHardKernel kernel, const at::Tensor& logits, const std::optional<at::Tensor>& topk_ids,
    const std::optional<at::Tensor>& topk_values, const std::optional<at::Tensor>& target_a,
    const std::optional<at::Tensor>& target_b, const std::optional<at::Tensor>& mix_lambda,
    const std::optional<at::Tensor>& codebook, double temperature, double soft_weight, double hard_weight,
    double label_smoothing, c10::string_view decode, c10::string_view soft_loss, bool hinton,
    c10::string_view reduction, int64_t ignore_index, bool compute_grad);

// In-place op: writes the gradient into `logits` and returns the per-row loss.
at::Tensor soft_hard_loss_inplace_impl(
    SoftHardKernel kernel, at::Tensor& logits, const std::optional<at::Tensor>& topk_ids,
    const std::optional<at::Tensor>& topk_values, const std::optional<at::Tensor>& target_a,
    const std::optional<at::Tensor>& target_b, const std::optional<at::Tensor>& mix_lambda,
    const std::optional<at::Tensor>& codebook, double temperature, double soft_weight, double hard_weight,
    double label_smoothing, c10::string_view decode, c10::string_view soft_loss, bool hinton,
    c10::string_view reduction, int64_t ignore_index);

}  // namespace hald

// Registers both variants of the op for one dispatch key with the given kernel.
#define HALD_REGISTER_SOFT_HARD(KEY, KERNEL)                                                              \
  namespace {                                                                                             \
  std::tuple<at::Tensor, at::Tensor> soft_hard_##KEY(                                                     \
      const at::Tensor& l, const std::optional<at::Tensor>& i, const std::optional<at::Tensor>& v,        \
      const std::optional<at::Tensor>& ta, const std::optional<at::Tensor>& tb,                           \
      const std::optional<at::Tensor>& lam, const std::optional<at::Tensor>& cb, double T, double ws,     \
      double wh, double eps, c10::string_view dec, c10::string_view sl, bool hin, c10::string_view red,   \
      int64_t ii, bool cg) {                                                                              \
    return hald::soft_hard_loss_impl(KERNEL, l, i, v, ta, tb, lam, cb, T, ws, wh, eps, dec, sl, hin, red, \
                                     ii, cg);                                                             \
  }                                                                                                       \
  at::Tensor soft_hard_inplace_##KEY(                                                                     \
      at::Tensor& l, const std::optional<at::Tensor>& i, const std::optional<at::Tensor>& v,              \
      const std::optional<at::Tensor>& ta, const std::optional<at::Tensor>& tb,                           \
      const std::optional<at::Tensor>& lam, const std::optional<at::Tensor>& cb, double T, double ws,     \
      double wh, double eps, c10::string_view dec, c10::string_view sl, bool hin, c10::string_view red,   \
      int64_t ii) {                                                                                       \
    return hald::soft_hard_loss_inplace_impl(KERNEL, l, i, v, ta, tb, lam, cb, T, ws, wh, eps, dec, sl,   \
                                             hin, red, ii);                                               \
  }                                                                                                       \
  }                                                                                                       \
  TORCH_LIBRARY_IMPL(hald, KEY, m) {                                                                      \
    m.impl("soft_hard_loss", &soft_hard_##KEY);                                                           \
    m.impl("soft_hard_loss_", &soft_hard_inplace_##KEY);                                                  \
  }
