// Host-side pieces of the soft_hard_loss op shared by its backends: the argument list (written once,
// as op_front.h's X-macro), the validated arguments, and the front every backend's boxed kernel calls.
// The layout is torchvision's: soft_hard_loss.cpp holds the schemas, the argument checks and the
// autograd kernel; cpu/ and cuda/ each register their kernels for their own dispatch key.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/stack.h>

#include <tuple>

#include "hald/op_front.h"
#include "hald/soft_hard_math.h"
#include "hald/typed_load.h"

// The in-place op's arguments in schema order; the out-of-place op adds `compute_grad`.
#define HALD_SOFT_HARD_ARGS(X)                                                                          \
  X(Tensor, logits) X(OptTensor, topk_ids) X(OptTensor, topk_values) X(OptTensor, hard_target)           \
  X(OptTensor, target_b) X(OptTensor, mix_lambda) X(OptTensor, codebook) X(OptTensor, teacher_logits)    \
  X(Float, temperature) X(Float, teacher_temperature) X(Float, soft_weight) X(Float, hard_weight)        \
  X(Float, label_smoothing) X(Str, decode) X(Str, soft_loss) X(Bool, hinton) X(Str, reduction)            \
  X(Int, ignore_index)
#define HALD_SOFT_HARD_GRAD_ARGS(X) HALD_SOFT_HARD_ARGS(X) X(Bool, compute_grad)

namespace hald {

HALD_DEFINE_OP_ARGS(SoftHardInputs, HALD_SOFT_HARD_ARGS)
HALD_DEFINE_OP_ARGS(SoftHardGradInputs, HALD_SOFT_HARD_GRAD_ARGS)

// Arguments after validation: every tensor is on the logits' device, side inputs are contiguous,
// and the row math's constants are in `P`.
struct SoftHardArgs {
  LossParams P;
  at::Tensor logits;    // [B, C], stride(1) == 1
  at::Tensor ids;       // [B, k] contiguous (SoftKind::Topk with k > 0 only)
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

// A backend kernel: fills loss_rows [B] (acc dtype) and, when a.compute_grad, grad [B, C] (which may
// alias a.logits for the in-place variant).
using SoftHardKernel = void (*)(const SoftHardArgs&, at::Tensor& loss_rows, at::Tensor& grad);
// A backend's in-place gradient scaling: grad[b, :] *= grad_rows[b], skipped where grad_rows[b] == 1
// (the usual upstream gradient of a reduced loss), read where it lives (no host sync on CUDA).
using SoftHardScaleKernel = void (*)(at::Tensor& grad, const at::Tensor& grad_rows);

// Runs one boxed call of `soft_hard_loss` (out of place: per-row losses, already carrying the
// reduction's factor, and the gradient of their sum, or an empty tensor when !compute_grad) or of
// `soft_hard_loss_` (in place: the gradient goes into `logits`, the per-row losses are returned).
void soft_hard_loss_call(SoftHardKernel kernel, torch::jit::Stack* stack);
void soft_hard_loss_inplace_call(SoftHardKernel kernel, torch::jit::Stack* stack);
// One boxed call of `_soft_hard_loss_scale_(Tensor(a!) grad, Tensor grad_rows) -> ()`.
void soft_hard_loss_scale_call(SoftHardScaleKernel kernel, torch::jit::Stack* stack);

}  // namespace hald
