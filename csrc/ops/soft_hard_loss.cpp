// Schemas, shared argument checks and the autograd kernel of the fused soft-KL / hard-CE loss. The
// backends' kernels register themselves for their dispatch key (cpu/soft_hard_loss_kernel.cpp,
// cuda/soft_hard_loss_kernel.cu) and call soft_hard_loss_call() / soft_hard_loss_inplace_call().
//
// Autograd (registered here for the Autograd key, in C++, so a step pays no Python): the forward
// computes the gradient of the summed per-row losses together with them; backward multiplies it by
// the upstream gradient *in place* (a kernel that reads the upstream value where it lives and skips
// rows whose value is exactly 1, so `loss.backward()` costs nothing and never syncs a GPU) and hands
// that buffer to autograd, which adopts it as `.grad` without a copy. When the graph is kept
// (retain_graph, gradcheck) or traced (torch.compile), backward returns a scaled copy instead and the
// saved buffer stays as it was.
#include "soft_hard_loss.h"

#include <ATen/ATen.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include <cmath>
#include <string>

namespace hald {

namespace {

int32_t parse_decode(const std::string& s) {
  if (s == "marginal") return int32_t(Decode::Marginal);
  if (s == "renorm") return int32_t(Decode::Renorm);
  if (s == "truncate") return int32_t(Decode::Truncate);
  TORCH_CHECK(false, "soft_hard_loss: decode must be 'marginal', 'renorm' or 'truncate', got '", s, "'");
}

Reduction parse_reduction(const std::string& s) {
  if (s == "none") return Reduction::None;
  if (s == "sum") return Reduction::Sum;
  if (s == "batchmean") return Reduction::BatchMean;
  if (s == "mean") return Reduction::Mean;
  TORCH_CHECK(false, "soft_hard_loss: reduction must be 'batchmean', 'mean', 'sum' or 'none', got '", s,
              "'");
}

void check_same_device(const at::Tensor& logits, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == logits.device(), "soft_hard_loss: ", name, " is on ", t.device(), " but logits are on ",
              logits.device());
}

at::Tensor check_batch_vector(const at::Tensor& logits, const at::Tensor& t, const char* name) {
  check_same_device(logits, t, name);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(0), "soft_hard_loss: ", name, " must have shape [",
              logits.size(0), "] (one per logits row), got ", t.sizes());
  return t;
}

// Kind of a tensor of stored values / dense probabilities / teacher logits; the codebook size it
// needs (0 for floating point).
int32_t value_kind(const at::Tensor& vals, const char* name, int64_t* codebook_size) {
  *codebook_size = 0;
  switch (vals.scalar_type()) {
    case at::kFloat: return int32_t(ValKind::F32);
    case at::kHalf: return int32_t(ValKind::F16);
    case at::kBFloat16: return int32_t(ValKind::BF16);
    case at::kDouble: return int32_t(ValKind::F64);
    case at::kByte: *codebook_size = 256; return int32_t(ValKind::Code8);
    case at::kShort:
    case at::kUInt16: *codebook_size = 65536; return int32_t(ValKind::Code16);
    default:
      TORCH_CHECK(false, "soft_hard_loss: ", name, " must be probabilities (float16/bfloat16/float32/float64) or "
                  "codes (uint8, int16/uint16), got ", vals.scalar_type());
  }
}

void check_codebook(SoftHardArgs& a, const at::Tensor& logits, const at::Tensor& vals, const char* name,
                    int64_t codebook_size, const std::optional<at::Tensor>& codebook) {
  if (codebook_size > 0) {
    TORCH_CHECK(codebook.has_value(), "soft_hard_loss: ", name, " are ", vals.scalar_type(),
                " codes, so a codebook of ", codebook_size, " float entries is required");
    const at::Tensor& cb = *codebook;
    check_same_device(logits, cb, "codebook");
    TORCH_CHECK(cb.dim() == 1 && cb.size(0) == codebook_size, "soft_hard_loss: a codebook for ", vals.scalar_type(),
                " codes must have shape [", codebook_size, "], got ", cb.sizes());
    TORCH_CHECK(cb.is_floating_point(), "soft_hard_loss: codebook must be floating point, got ", cb.scalar_type());
    a.codebook = cb.to(at::kFloat).contiguous();
  } else {
    TORCH_CHECK(!codebook.has_value(), "soft_hard_loss: a codebook was given but ", name, " are probabilities (",
                vals.scalar_type(), "), not codes");
  }
}

int32_t id_kind(const at::Tensor& ids, int64_t C) {
  int32_t kind = 0;
  switch (ids.scalar_type()) {
    case at::kLong: kind = int32_t(IdKind::I64); break;
    case at::kInt: kind = int32_t(IdKind::I32); break;
    case at::kShort:
    case at::kUInt16: kind = int32_t(IdKind::U16); break;
    default: TORCH_CHECK(false, "soft_hard_loss: topk_ids must be int64, int32, int16 or uint16, got ", ids.scalar_type());
  }
  if (kind == int32_t(IdKind::U16)) {
    TORCH_CHECK(C <= 65536, "soft_hard_loss: 16-bit topk_ids cannot address C = ", C, " classes");
  }
  return kind;
}

// Soft term: a stored top-k label (topk_ids, topk_values), a dense target (topk_values [B, C]
// without ids), or the teacher's logits [B, C].
void prepare_soft(SoftHardArgs& a, const SoftHardInputs& in, double batch_factor) {
  const at::Tensor& logits = in.logits;
  LossParams& P = a.P;
  const int64_t B = a.B, C = P.C;
  TORCH_CHECK(!(in.topk_ids.has_value() && !in.topk_values.has_value()),
              "soft_hard_loss: topk_ids and topk_values must be given together (topk_values alone, shaped like "
              "logits, is a dense target)");
  TORCH_CHECK(!(in.teacher_logits.has_value() && in.topk_values.has_value()),
              "soft_hard_loss: give either a stored label (topk_ids, topk_values) or teacher_logits, not both");
  if (in.teacher_logits.has_value()) {
    const at::Tensor& t = *in.teacher_logits;
    check_same_device(logits, t, "teacher_logits");
    TORCH_CHECK(t.sizes() == logits.sizes(), "soft_hard_loss: teacher_logits must have the shape of logits ",
                logits.sizes(), ", got ", t.sizes());
    TORCH_CHECK(t.is_floating_point(), "soft_hard_loss: teacher_logits must be floating point, got ",
                t.scalar_type());
    TORCH_CHECK(std::isfinite(in.teacher_temperature) && in.teacher_temperature > 0,
                "soft_hard_loss: teacher_temperature must be finite and > 0, got ", in.teacher_temperature);
    TORCH_CHECK(!in.codebook.has_value(), "soft_hard_loss: a codebook was given with teacher_logits");
    int64_t unused = 0;
    a.val_kind = value_kind(t, "teacher_logits", &unused);
    a.values = t.contiguous();
    P.soft_kind = int32_t(SoftKind::Teacher);
    P.teacher_temperature = in.teacher_temperature;
    P.decode = int32_t(Decode::Truncate);  // q = softmax(t / T_teacher) as it is
    P.k = C;
  } else if (in.topk_values.has_value()) {
    const at::Tensor& vals = *in.topk_values;
    check_same_device(logits, vals, "topk_values");
    int64_t codebook_size = 0;
    if (in.topk_ids.has_value()) {
      const at::Tensor& ids = *in.topk_ids;
      check_same_device(logits, ids, "topk_ids");
      TORCH_CHECK(ids.dim() == 2 && ids.size(0) == B, "soft_hard_loss: topk_ids must have shape [", B, ", k], got ",
                  ids.sizes());
      TORCH_CHECK(vals.sizes() == ids.sizes(), "soft_hard_loss: topk_values must have the shape of topk_ids ",
                  ids.sizes(), ", got ", vals.sizes());
      P.k = ids.size(1);
      // k = 0 is an empty stored label (marginal: the uniform distribution); nothing is read then.
      TORCH_CHECK(P.k >= 0 && P.k <= C, "soft_hard_loss: k (topk_ids.size(1) = ", P.k, ") must be in [0, C = ", C, "]");
      a.id_kind = id_kind(ids, C);
      a.ids = ids.contiguous();
      P.soft_kind = int32_t(SoftKind::Topk);
    } else {
      TORCH_CHECK(vals.sizes() == logits.sizes(), "soft_hard_loss: topk_values without topk_ids is a dense target "
                  "and must have the shape of logits ", logits.sizes(), ", got ", vals.sizes());
      P.k = C;
      P.soft_kind = int32_t(SoftKind::Dense);
    }
    a.val_kind = value_kind(vals, "topk_values", &codebook_size);
    check_codebook(a, logits, vals, "topk_values", codebook_size, in.codebook);
    a.values = vals.contiguous();
  } else {
    TORCH_CHECK(!in.codebook.has_value(), "soft_hard_loss: a codebook was given without topk_values");
    return;
  }
  P.has_soft = in.soft_weight != 0.0;
  P.soft_scale = in.soft_weight * (in.hinton ? in.temperature * in.temperature : 1.0) * batch_factor;
}

SoftHardArgs prepare_soft_hard(const SoftHardInputs& in, bool compute_grad, bool inplace) {
  SoftHardArgs a;
  const at::Tensor& logits = in.logits;
  TORCH_CHECK(logits.dim() == 2, "soft_hard_loss: logits must be 2-D [B, C], got shape ", logits.sizes());
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kDouble,
              "soft_hard_loss: logits must be float32, bfloat16, float16 or float64, got ", dt);
  const int64_t B = logits.size(0), C = logits.size(1);
  TORCH_CHECK(C > 0, "soft_hard_loss: logits must have at least one class");
  TORCH_CHECK(std::isfinite(in.temperature) && in.temperature > 0,
              "soft_hard_loss: temperature must be finite and > 0, got ", in.temperature);
  TORCH_CHECK(std::isfinite(in.soft_weight) && std::isfinite(in.hard_weight), "soft_hard_loss: weights must be finite");
  TORCH_CHECK(in.label_smoothing >= 0 && in.label_smoothing <= 1,
              "soft_hard_loss: label_smoothing must be in [0, 1], got ", in.label_smoothing);
  TORCH_CHECK(in.soft_loss == "kl" || in.soft_loss == "ce", "soft_hard_loss: soft_loss must be 'kl' or 'ce', got '",
              in.soft_loss, "'");
  if (inplace) {
    TORCH_CHECK(logits.stride(1) == 1, "soft_hard_loss_: the in-place variant needs logits with unit class stride");
    // Rows that share memory (stride 0 from expand(), or stride(0) < C) would each write their
    // gradient over another row's logits while it is still being read.
    TORCH_CHECK(B <= 1 || logits.stride(0) >= C, "soft_hard_loss_: inplace=True needs logits rows that do not "
                "overlap (got stride(0) = ", logits.stride(0), " for C = ", C,
                ", e.g. an expand()ed tensor); pass a contiguous tensor or inplace=False");
  }
  a.logits = logits.stride(1) == 1 ? logits : logits.contiguous();
  a.B = B;
  a.compute_grad = compute_grad;
  LossParams& P = a.P;
  P.C = C;
  P.temperature = in.temperature;
  P.smoothing = in.label_smoothing;
  P.decode = parse_decode(in.decode);
  P.soft_kl = in.soft_loss == "kl";
  P.ignore_index = in.ignore_index;
  const Reduction red = parse_reduction(in.reduction);
  const double batch_factor =
      (red == Reduction::BatchMean || red == Reduction::Mean) ? 1.0 / double(std::max<int64_t>(B, 1)) : 1.0;
  const auto acc_dtype = dt == at::kDouble ? at::kDouble : at::kFloat;
  prepare_soft(a, in, batch_factor);
  const auto& target_a = in.hard_target;
  const auto& target_b = in.target_b;
  const auto& mix_lambda = in.mix_lambda;
  const double hard_weight = in.hard_weight;

  // Hard term: class targets, optionally a CutMix pair (target_b, lambda).
  TORCH_CHECK(!(target_b.has_value() || mix_lambda.has_value()) || target_a.has_value(),
              "soft_hard_loss: a CutMix pair (target_b, mix_lambda) needs hard_target too");
  TORCH_CHECK(target_b.has_value() == mix_lambda.has_value(),
              "soft_hard_loss: target_b and mix_lambda must be given together");
  if (target_a.has_value()) {
    for (const auto* t : {&target_a, &target_b}) {
      if (!t->has_value()) continue;
      const at::Tensor& tt = **t;
      check_batch_vector(logits, tt, t == &target_a ? "hard_target" : "target_b");
      TORCH_CHECK(!tt.is_floating_point() && !tt.is_complex() && tt.scalar_type() != at::kBool,
                  "soft_hard_loss: class targets must be integer tensors, got ", tt.scalar_type());
    }
    a.target_a = target_a->to(at::kLong).contiguous();
    if (target_b.has_value()) {
      a.target_b = target_b->to(at::kLong).contiguous();
      check_batch_vector(logits, *mix_lambda, "mix_lambda");
      TORCH_CHECK(mix_lambda->is_floating_point(), "soft_hard_loss: mix_lambda must be floating point, got ",
                  mix_lambda->scalar_type());
      a.lam = mix_lambda->to(acc_dtype).contiguous();
      P.has_pair = true;
    }
    P.has_hard = hard_weight != 0.0;
    P.hard_weight = hard_weight;
    P.hard_mean = red == Reduction::Mean;
    P.hard_red = batch_factor;
  }
  TORCH_CHECK(in.topk_values.has_value() || in.teacher_logits.has_value() || target_a.has_value(),
              "soft_hard_loss: give a soft target (topk_ids + topk_values, dense topk_values, or teacher_logits), "
              "a hard_target, or both");
  return a;
}

at::Tensor acc_empty(const at::Tensor& logits, int64_t B) {
  return at::empty({B}, logits.options().dtype(logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
}

}  // namespace

void soft_hard_loss_call(SoftHardKernel kernel, torch::jit::Stack* stack) {
  const SoftHardGradInputs g = SoftHardGradInputs::pop(*stack);
  const SoftHardInputs in{g.logits, g.topk_ids, g.topk_values, g.hard_target, g.target_b, g.mix_lambda, g.codebook,
                          g.teacher_logits, g.temperature, g.teacher_temperature, g.soft_weight, g.hard_weight,
                          g.label_smoothing, g.decode, g.soft_loss, g.hinton, g.reduction, g.ignore_index};
  const SoftHardArgs a = prepare_soft_hard(in, g.compute_grad, /*inplace=*/false);
  at::Tensor loss_rows = acc_empty(g.logits, a.B);
  at::Tensor grad = g.compute_grad ? at::empty({a.B, a.P.C}, g.logits.options()) : at::empty({0}, g.logits.options());
  kernel(a, loss_rows, grad);
  torch::jit::push(*stack, std::move(loss_rows), std::move(grad));
}

void soft_hard_loss_inplace_call(SoftHardKernel kernel, torch::jit::Stack* stack) {
  const SoftHardInputs in = SoftHardInputs::pop(*stack);
  const SoftHardArgs a = prepare_soft_hard(in, /*compute_grad=*/true, /*inplace=*/true);
  at::Tensor loss_rows = acc_empty(in.logits, a.B);
  at::Tensor grad = a.logits;  // the validated logits: unit class stride, same storage
  kernel(a, loss_rows, grad);
  torch::jit::push(*stack, std::move(loss_rows));
}

void soft_hard_loss_scale_call(SoftHardScaleKernel kernel, torch::jit::Stack* stack) {
  at::Tensor grad = (*stack)[stack->size() - 2].toTensor();
  const at::Tensor rows = (*stack)[stack->size() - 1].toTensor();
  torch::jit::drop(*stack, 2);
  TORCH_CHECK(grad.dim() == 2 && grad.stride(1) == 1, "_soft_hard_loss_scale_: grad must be [B, C] with unit class "
              "stride, got shape ", grad.sizes(), " strides ", grad.strides());
  TORCH_CHECK(rows.dim() == 1 && rows.size(0) == grad.size(0) && rows.device() == grad.device(),
              "_soft_hard_loss_scale_: grad_rows must be [", grad.size(0), "] on ", grad.device(), ", got ",
              rows.sizes(), " on ", rows.device());
  TORCH_CHECK(rows.is_floating_point(), "_soft_hard_loss_scale_: grad_rows must be floating point");
  if (grad.numel() == 0) return;
  kernel(grad, rows);
}

namespace {

const c10::OperatorHandle& loss_op() {
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("hald::soft_hard_loss", "");
  return op;
}

// A tensor that torch.compile, a fake / functional tensor or a dispatch mode is tracing: backward
// must stay functional there (no in-place update of a saved tensor).
bool traced(const at::Tensor& t) {
  return t.key_set().has_any(c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::Functionalize})) ||
         c10::impl::dispatch_mode_enabled();
}

struct SoftHardFunction : public torch::autograd::Function<SoftHardFunction> {
  // `args`: the op's whole argument stack (logits first, compute_grad = true last); `logits` is
  // passed apart so autograd connects the result to it.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits,
                                                torch::jit::Stack* args) {
    ctx->set_materialize_grads(false);  // no zero-filled [B, C] for the gradient output nobody differentiates
    {
      at::AutoDispatchBelowADInplaceOrView below;
      loss_op().callBoxed(args);
    }
    at::Tensor rows = (*args)[0].toTensor(), grad = (*args)[1].toTensor();
    ctx->save_for_backward({grad});
    ctx->mark_non_differentiable({grad});
    return {rows, grad};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const at::Tensor& up = grad_out[0];
    if (!up.defined()) return {at::Tensor(), at::Tensor()};  // only the gradient output was used
    at::Tensor grad = ctx->get_saved_variables()[0];
    if (traced(up) || traced(grad) || torch::autograd::get_current_graph_task_keep_graph()) {
      // Formed in the accumulation type and rounded once into the logits dtype.
      at::Tensor out = at::empty_like(grad, at::MemoryFormat::Contiguous);
      at::mul_out(out, grad, up.unsqueeze(1));
      return {out, at::Tensor()};
    }
    static auto scale = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("hald::_soft_hard_loss_scale_", "")
                            .typed<void(at::Tensor&, const at::Tensor&)>();
    scale.call(grad, up);
    return {grad, at::Tensor()};
  }
};

void soft_hard_loss_autograd(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const size_t n = SoftHardGradInputs::count;
  const at::Tensor logits = (*stack)[stack->size() - n].toTensor();
  if (!(at::GradMode::is_enabled() && logits.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView below;
    op.callBoxed(stack);
    return;
  }
  stack->back() = c10::IValue(true);  // compute_grad: the gradient is what backward returns
  torch::jit::Stack args(stack->end() - n, stack->end());
  torch::jit::drop(*stack, n);
  auto out = SoftHardFunction::apply(logits, &args);
  torch::jit::push(*stack, std::move(out[0]), std::move(out[1]));
}

std::string inplace_schema() {
  std::string s = SoftHardInputs::schema("soft_hard_loss_", "Tensor");
  const std::string plain = "Tensor logits", mutated = "Tensor(a!) logits";
  s.replace(s.find(plain), plain.size(), mutated);
  return s;
}

}  // namespace

}  // namespace hald

TORCH_LIBRARY_FRAGMENT(hald, m) {
  // Per-row losses (already scaled by the reduction's factor: their sum is the reduced loss) and the
  // gradient of that sum with respect to logits, computed in the same pass. compute_grad=False
  // returns an empty gradient (evaluation; forward only).
  m.def(hald::SoftHardGradInputs::schema("soft_hard_loss", "(Tensor, Tensor)").c_str());
  // The same, writing the gradient into `logits` (declared mutated) and returning the per-row losses.
  m.def(hald::inplace_schema().c_str());
  // grad[b, :] *= grad_rows[b] in place, rows whose factor is exactly 1 untouched (backward).
  m.def("_soft_hard_loss_scale_(Tensor(a!) grad, Tensor grad_rows) -> ()");
}

TORCH_LIBRARY_IMPL(hald, Autograd, m) {
  m.impl("soft_hard_loss", torch::CppFunction::makeFromBoxedFunction<&hald::soft_hard_loss_autograd>());
}
