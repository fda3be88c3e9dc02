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

}  // namespace

SoftHardArgs prepare_soft_hard(const at::Tensor& logits, const std::optional<at::Tensor>& topk_ids,
                               const std::optional<at::Tensor>& topk_values, const std::optional<at::Tensor>& target_a,
                               const std::optional<at::Tensor>& target_b, const std::optional<at::Tensor>& mix_lambda,
                               const std::optional<at::Tensor>& codebook, double temperature, double soft_weight,
                               double hard_weight, double label_smoothing, c10::string_view decode,
                               c10::string_view soft_loss, bool hinton, c10::string_view reduction,
                               int64_t ignore_index, bool compute_grad, bool inplace) {
  SoftHardArgs a;
  TORCH_CHECK(logits.dim() == 2, "soft_hard_loss: logits must be 2-D [B, C], got shape ", logits.sizes());
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kDouble,
              "soft_hard_loss: logits must be float32, bfloat16, float16 or float64, got ", dt);
  const int64_t B = logits.size(0), C = logits.size(1);
  TORCH_CHECK(C > 0, "soft_hard_loss: logits must have at least one class");
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, "soft_hard_loss: temperature must be finite and > 0, got ",
              temperature);
  TORCH_CHECK(std::isfinite(soft_weight) && std::isfinite(hard_weight), "soft_hard_loss: weights must be finite");
  TORCH_CHECK(label_smoothing >= 0 && label_smoothing <= 1, "soft_hard_loss: label_smoothing must be in [0, 1], got ",
              label_smoothing);
  TORCH_CHECK(soft_loss == "kl" || soft_loss == "ce", "soft_hard_loss: soft_loss must be 'kl' or 'ce', got '",
              std::string(soft_loss), "'");
  if (inplace) {
    TORCH_CHECK(logits.stride(1) == 1, "soft_hard_loss_: the in-place variant needs logits with unit class stride");
  }
  a.logits = logits.stride(1) == 1 ? logits : logits.contiguous();
  a.B = B;
  a.compute_grad = compute_grad;
  LossParams& P = a.P;
  P.C = C;
  P.temperature = temperature;
  P.smoothing = label_smoothing;
  P.decode = parse_decode(decode);
  P.soft_kl = soft_loss == "kl";
  P.ignore_index = ignore_index;
  const Reduction red = parse_reduction(reduction);
  const double batch_factor = (red == Reduction::BatchMean || red == Reduction::Mean) ? 1.0 / double(std::max<int64_t>(B, 1)) : 1.0;
  const auto acc_dtype = dt == at::kDouble ? at::kDouble : at::kFloat;

  // Soft term: top-k ids and values (probabilities, or codes through a codebook).
  TORCH_CHECK(topk_ids.has_value() == topk_values.has_value(),
              "soft_hard_loss: topk_ids and topk_values must be given together");
  if (topk_ids.has_value()) {
    const at::Tensor& ids = *topk_ids;
    const at::Tensor& vals = *topk_values;
    check_same_device(logits, ids, "topk_ids");
    check_same_device(logits, vals, "topk_values");
    TORCH_CHECK(ids.dim() == 2 && ids.size(0) == B, "soft_hard_loss: topk_ids must have shape [", B, ", k], got ",
                ids.sizes());
    TORCH_CHECK(vals.sizes() == ids.sizes(), "soft_hard_loss: topk_values must have the shape of topk_ids ",
                ids.sizes(), ", got ", vals.sizes());
    const int64_t k = ids.size(1);
    TORCH_CHECK(k >= 1 && k <= C, "soft_hard_loss: k (topk_ids.size(1) = ", k, ") must be in [1, C = ", C, "]");
    switch (ids.scalar_type()) {
      case at::kLong: a.id_kind = int32_t(IdKind::I64); break;
      case at::kInt: a.id_kind = int32_t(IdKind::I32); break;
      case at::kShort:
      case at::kUInt16: a.id_kind = int32_t(IdKind::U16); break;
      default: TORCH_CHECK(false, "soft_hard_loss: topk_ids must be int64, int32, int16 or uint16, got ", ids.scalar_type());
    }
    if (a.id_kind == int32_t(IdKind::U16)) {
      TORCH_CHECK(C <= 65536, "soft_hard_loss: 16-bit topk_ids cannot address C = ", C, " classes");
    }
    int64_t codebook_size = 0;
    switch (vals.scalar_type()) {
      case at::kFloat: a.val_kind = int32_t(ValKind::F32); break;
      case at::kHalf: a.val_kind = int32_t(ValKind::F16); break;
      case at::kBFloat16: a.val_kind = int32_t(ValKind::BF16); break;
      case at::kDouble: a.val_kind = int32_t(ValKind::F64); break;
      case at::kByte: a.val_kind = int32_t(ValKind::Code8); codebook_size = 256; break;
      case at::kShort:
      case at::kUInt16: a.val_kind = int32_t(ValKind::Code16); codebook_size = 65536; break;
      default:
        TORCH_CHECK(false, "soft_hard_loss: topk_values must be probabilities (float16/bfloat16/float32/float64) or "
                    "codes (uint8, int16/uint16), got ", vals.scalar_type());
    }
    if (codebook_size > 0) {
      TORCH_CHECK(codebook.has_value(), "soft_hard_loss: topk_values are ", vals.scalar_type(),
                  " codes, so a codebook of ", codebook_size, " float entries is required");
      const at::Tensor& cb = *codebook;
      check_same_device(logits, cb, "codebook");
      TORCH_CHECK(cb.dim() == 1 && cb.size(0) == codebook_size, "soft_hard_loss: a codebook for ",
                  vals.scalar_type(), " codes must have shape [", codebook_size, "], got ", cb.sizes());
      TORCH_CHECK(cb.is_floating_point(), "soft_hard_loss: codebook must be floating point, got ", cb.scalar_type());
      a.codebook = cb.to(at::kFloat).contiguous();
    } else {
      TORCH_CHECK(!codebook.has_value(), "soft_hard_loss: a codebook was given but topk_values are probabilities (",
                  vals.scalar_type(), "), not codes");
    }
    a.ids = ids.contiguous();
    a.values = vals.contiguous();
    P.k = k;
    P.has_soft = soft_weight != 0.0;
    P.soft_scale = soft_weight * (hinton ? temperature * temperature : 1.0) * batch_factor;
  } else {
    TORCH_CHECK(!codebook.has_value(), "soft_hard_loss: a codebook was given without topk_values");
  }

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
  TORCH_CHECK(topk_ids.has_value() || target_a.has_value(),
              "soft_hard_loss: give a soft label (topk_ids, topk_values), a hard_target, or both");
  return a;
}

std::tuple<at::Tensor, at::Tensor> soft_hard_loss_impl(
    SoftHardKernel kernel, const at::Tensor& logits, const std::optional<at::Tensor>& topk_ids,
    const std::optional<at::Tensor>& topk_values, const std::optional<at::Tensor>& target_a,
    const std::optional<at::Tensor>& target_b, const std::optional<at::Tensor>& mix_lambda,
    const std::optional<at::Tensor>& codebook, double temperature, double soft_weight, double hard_weight,
    double label_smoothing, c10::string_view decode, c10::string_view soft_loss, bool hinton,
    c10::string_view reduction, int64_t ignore_index, bool compute_grad) {
  SoftHardArgs a = prepare_soft_hard(logits, topk_ids, topk_values, target_a, target_b, mix_lambda, codebook,
                                     temperature, soft_weight, hard_weight, label_smoothing, decode, soft_loss,
                                     hinton, reduction, ignore_index, compute_grad, /*inplace=*/false);
  const auto acc_dtype = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss_rows = at::empty({a.B}, logits.options().dtype(acc_dtype));
  at::Tensor grad = compute_grad ? at::empty({a.B, a.P.C}, logits.options()) : at::empty({0}, logits.options());
  kernel(a, loss_rows, grad);
  return {loss_rows, grad};
}

at::Tensor soft_hard_loss_inplace_impl(
    SoftHardKernel kernel, at::Tensor& logits, const std::optional<at::Tensor>& topk_ids,
    const std::optional<at::Tensor>& topk_values, const std::optional<at::Tensor>& target_a,
    const std::optional<at::Tensor>& target_b, const std::optional<at::Tensor>& mix_lambda,
    const std::optional<at::Tensor>& codebook, double temperature, double soft_weight, double hard_weight,
    double label_smoothing, c10::string_view decode, c10::string_view soft_loss, bool hinton,
    c10::string_view reduction, int64_t ignore_index) {
  SoftHardArgs a = prepare_soft_hard(logits, topk_ids, topk_values, target_a, target_b, mix_lambda, codebook,
                                     temperature, soft_weight, hard_weight, label_smoothing, decode, soft_loss,
                                     hinton, reduction, ignore_index, /*compute_grad=*/true, /*inplace=*/true);
  const auto acc_dtype = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss_rows = at::empty({a.B}, logits.options().dtype(acc_dtype));
  kernel(a, loss_rows, logits);
  return loss_rows;
}

}  // namespace hald

TORCH_LIBRARY_FRAGMENT(hald, m) {
  // Per-row losses (already scaled by the reduction's factor: their sum is the reduced loss) and the
  // gradient of that sum with respect to logits, computed in the same pass. compute_grad=False
  // returns an empty gradient (evaluation).
  m.def(
      "soft_hard_loss(Tensor logits, Tensor? topk_ids, Tensor? topk_values, Tensor? hard_target, "
      "Tensor? target_b, Tensor? mix_lambda, Tensor? codebook, float temperature, float soft_weight, "
      "float hard_weight, float label_smoothing, str decode, str soft_loss, bool hinton, str reduction, "
      "int ignore_index, bool compute_grad) -> (Tensor, Tensor)");
  // The same, writing the gradient into `logits` (declared mutated) and returning the per-row losses.
  m.def(
      "soft_hard_loss_(Tensor(a!) logits, Tensor? topk_ids, Tensor? topk_values, Tensor? hard_target, "
      "Tensor? target_b, Tensor? mix_lambda, Tensor? codebook, float temperature, float soft_weight, "
      "float hard_weight, float label_smoothing, str decode, str soft_loss, bool hinton, str reduction, "
      "int ignore_index) -> Tensor");
}
