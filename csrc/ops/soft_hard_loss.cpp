// Schema and argument checks of the fused soft-KL / hard-CE loss, shared by every backend.
#include "soft_hard_loss.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

namespace hald {

namespace {

int32_t parse_decode(c10::string_view s) {
  if (s == "marginal") return int32_t(Decode::Marginal);
  if (s == "renorm") return int32_t(Decode::Renorm);
  if (s == "truncate") return int32_t(Decode::Truncate);
  TORCH_CHECK(false, "soft_hard_loss: decode must be 'marginal', 'renorm' or 'truncate', got '", std::string(s), "'");
}

Reduction parse_reduction(c10::string_view s) {
  if (s == "none") return Reduction::None;
  if (s == "sum") return Reduction::Sum;
  if (s == "batchmean") return Reduction::BatchMean;
  if (s == "mean") return Reduction::Mean;
  TORCH_CHECK(false, "soft_hard_loss: reduction must be 'batchmean', 'mean', 'sum' or 'none', got '", std::string(s),
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
      TORCH_CHECK(P.k >= 1 && P.k <= C, "soft_hard_loss: k (topk_ids.size(1) = ", P.k, ") must be in [1, C = ", C, "]");
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

}  // namespace

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
              std::string(in.soft_loss), "'");
  if (inplace) {
    TORCH_CHECK(logits.stride(1) == 1, "soft_hard_loss_: the in-place variant needs logits with unit class stride");
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

std::tuple<at::Tensor, at::Tensor> soft_hard_loss_front(SoftHardKernel kernel, const SoftHardInputs& in,
                                                        bool compute_grad) {
  SoftHardArgs a = prepare_soft_hard(in, compute_grad, /*inplace=*/false);
  const auto& logits = in.logits;
  const auto acc_dtype = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss_rows = at::empty({a.B}, logits.options().dtype(acc_dtype));
  at::Tensor grad = compute_grad ? at::empty({a.B, a.P.C}, logits.options()) : at::empty({0}, logits.options());
  kernel(a, loss_rows, grad);
  return {loss_rows, grad};
}

at::Tensor soft_hard_loss_inplace_front(SoftHardKernel kernel, const SoftHardInputs& in) {
  SoftHardArgs a = prepare_soft_hard(in, /*compute_grad=*/true, /*inplace=*/true);
  const auto acc_dtype = in.logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss_rows = at::empty({a.B}, in.logits.options().dtype(acc_dtype));
  at::Tensor grad = a.logits;  // the validated logits: unit class stride, same storage
  kernel(a, loss_rows, grad);
  return loss_rows;
}

}  // namespace hald

TORCH_LIBRARY_FRAGMENT(hald, m) {
  // Per-row losses (already scaled by the reduction's factor: their sum is the reduced loss) and the
  // gradient of that sum with respect to logits, computed in the same pass. compute_grad=False
  // returns an empty gradient (evaluation).
  m.def("soft_hard_loss(Tensor logits" HALD_SOFT_HARD_ARGS(HALD_SH_SCHEMA) ", bool compute_grad) -> (Tensor, Tensor)");
  // The same, writing the gradient into `logits` (declared mutated) and returning the per-row losses.
  m.def("soft_hard_loss_(Tensor(a!) logits" HALD_SOFT_HARD_ARGS(HALD_SH_SCHEMA) ") -> Tensor");
}
