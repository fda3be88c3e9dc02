// Shared host-side pieces of the soft_hard_loss op: the argument list (written once, below), the
// validated arguments, and the one front function every backend registers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

#include "hald/soft_hard_math.h"
#include "hald/typed_load.h"

// The op's arguments after `logits`, in schema order: X(C++ parameter type, schema type, name).
// The schema strings, the front functions' parameter lists and SoftHardInputs all expand this one
// list; the Python wrapper reads the names back from the registered schema.
#define HALD_SOFT_HARD_ARGS(X)                                  \
  X(const std::optional<at::Tensor>&, "Tensor?", topk_ids)      \
  X(const std::optional<at::Tensor>&, "Tensor?", topk_values)   \
  X(const std::optional<at::Tensor>&, "Tensor?", hard_target)   \
  X(const std::optional<at::Tensor>&, "Tensor?", target_b)      \
  X(const std::optional<at::Tensor>&, "Tensor?", mix_lambda)    \
  X(const std::optional<at::Tensor>&, "Tensor?", codebook)      \
  X(const std::optional<at::Tensor>&, "Tensor?", teacher_logits) \
  X(double, "float", temperature)                               \
  X(double, "float", teacher_temperature)                       \
  X(double, "float", soft_weight)                               \
  X(double, "float", hard_weight)                               \
  X(double, "float", label_smoothing)                           \
  X(c10::string_view, "str", decode)                            \
  X(c10::string_view, "str", soft_loss)                         \
  X(bool, "bool", hinton)                                       \
  X(c10::string_view, "str", reduction)                         \
  X(int64_t, "int", ignore_index)

#define HALD_SH_PARAM(type, schema, name) , type name
#define HALD_SH_NAME(type, schema, name) , name
#define HALD_SH_FIELD(type, schema, name) type name;
#define HALD_SH_SCHEMA(type, schema, name) ", " schema " " #name

namespace hald {

// The op's inputs as given (references into the caller's arguments, valid for one call).
struct SoftHardInputs {
  const at::Tensor& logits;
  HALD_SOFT_HARD_ARGS(HALD_SH_FIELD)
};

// Arguments after validation: every tensor is on the logits' device, side inputs are contiguous,
// and the row math's constants are in `P`.
struct SoftHardArgs {
  LossParams P;
  at::Tensor logits;    // [B, C], stride(1) == 1
  at::Tensor ids;       // [B, k] contiguous (SoftKind::Topk only)
  at::Tensor values;    // [B, k] or [B, C] contiguous (stored label / dense target), or the teacher's logits [B, C]
  at::Tensor codebook;  // fp32 [256] or [65536], or undefined
  at::Tensor target_a;  // int64 [B] or undefined
  at::Tensor target_b;  // int64 [B] or undefined
  at::Tensor lam;       // acc dtype [B] or undefined
  int32_t id_kind = 0;
  int32_t val_kind = 0;  // ValKind of `values` (also of the teacher's logits)
  int64_t B = 0;
  bool compute_grad = true;
};

SoftHardArgs prepare_soft_hard(const SoftHardInputs& in, bool compute_grad, bool inplace);

// A backend kernel: fills loss_rows [B] (acc dtype) and, when a.compute_grad, grad [B, C] (which may
// alias a.logits for the in-place variant).
using SoftHardKernel = void (*)(const SoftHardArgs&, at::Tensor& loss_rows, at::Tensor& grad);

void soft_hard_loss_cpu_kernel(const SoftHardArgs& a, at::Tensor& loss_rows, at::Tensor& grad);
void soft_hard_loss_cuda_kernel(const SoftHardArgs& a, at::Tensor& loss_rows, at::Tensor& grad);

// The front: arguments checked once, then the backend's kernel. Out of place it returns (per-row
// loss, gradient); the per-row losses already carry the reduction's factor (their sum is the
// reduced loss). In place it writes the gradient into `logits` and returns the per-row loss.
std::tuple<at::Tensor, at::Tensor> soft_hard_loss_front(SoftHardKernel kernel, const SoftHardInputs& in,
                                                        bool compute_grad);
at::Tensor soft_hard_loss_inplace_front(SoftHardKernel kernel, const SoftHardInputs& in);

// The functions registered with the dispatcher for one backend (the schema's exact signatures).
template <SoftHardKernel K>
std::tuple<at::Tensor, at::Tensor> soft_hard_loss_op(const at::Tensor& logits HALD_SOFT_HARD_ARGS(HALD_SH_PARAM),
                                                     bool compute_grad) {
  return soft_hard_loss_front(K, SoftHardInputs{logits HALD_SOFT_HARD_ARGS(HALD_SH_NAME)}, compute_grad);
}

template <SoftHardKernel K>
at::Tensor soft_hard_loss_inplace_op(at::Tensor& logits HALD_SOFT_HARD_ARGS(HALD_SH_PARAM)) {
  return soft_hard_loss_inplace_front(K, SoftHardInputs{logits HALD_SOFT_HARD_ARGS(HALD_SH_NAME)});
}

}  // namespace hald

// Registers both variants of the op for one dispatch key with the given kernel.
#define HALD_REGISTER_SOFT_HARD(KEY, KERNEL)                                   \
  TORCH_LIBRARY_IMPL(hald, KEY, m) {                                           \
    m.impl("soft_hard_loss", &hald::soft_hard_loss_op<KERNEL>);                \
    m.impl("soft_hard_loss_", &hald::soft_hard_loss_inplace_op<KERNEL>);       \
  }
