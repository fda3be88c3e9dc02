// The label codec ops (top-k encode to quantised codes, decode): their schemas and the checks every
// backend runs before its kernel (the kernels register themselves: cpu/label_codec_kernel.cpp,
// cuda/label_codec_kernel.cu). Encoding runs offline (relabel, import), so its checks
// may read values on the host (NaN / negative probabilities are refused here rather than coded into
// garbage); the decoders only check what is cheap, since the label store validates ids and codes
// when it opens a file.
#include "label_codec.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

namespace hald {
namespace {

int32_t parse_decode_mode(const std::string& s) {
  if (s == "marginal") return int32_t(Decode::Marginal);
  if (s == "renorm") return int32_t(Decode::Renorm);
  if (s == "truncate") return int32_t(Decode::Truncate);
  TORCH_CHECK(false, "label_decode_dense: decode must be 'marginal', 'renorm' or 'truncate', got '", s, "'");
}

void check_codebook(const at::Tensor& codes, const at::Tensor& codebook, const char* op) {
  TORCH_CHECK(codebook.device() == codes.device(), op, ": codebook is on ", codebook.device(), " but codes are on ",
              codes.device());
  int64_t entries = 0;
  switch (codes.scalar_type()) {
    case at::kByte: entries = 256; break;
    case at::kUInt16:
    case at::kShort: entries = 65536; break;
    default: TORCH_CHECK(false, op, ": codes must be uint8 or uint16 (int16 read as unsigned), got ", codes.scalar_type());
  }
  TORCH_CHECK(codebook.dim() == 1 && codebook.size(0) == entries, op, ": a codebook for ", codes.scalar_type(),
              " codes must have shape [", entries, "], got ", codebook.sizes());
  TORCH_CHECK(codebook.scalar_type() == at::kFloat, op, ": codebook must be float32, got ", codebook.scalar_type());
}

void check_encode_args(const LabelEncodeArgs& in) {
  const at::Tensor& scores = in.scores;
  TORCH_CHECK(scores.dim() == 2, "label_encode: scores must be 2-D [N, C], got shape ", scores.sizes());
  const auto dt = scores.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
              "label_encode: scores must be float32, float16, bfloat16 or float64, got ", dt);
  const int64_t C = scores.size(1);
  TORCH_CHECK(C >= 1 && C <= std::numeric_limits<int32_t>::max(), "label_encode: the class count C = ", C,
              " must be in [1, 2^31)");
  TORCH_CHECK(in.k >= 1 && in.k <= C, "label_encode: k = ", in.k, " must be in [1, C = ", C, "]");
  TORCH_CHECK(std::isfinite(in.temperature) && in.temperature > 0,
              "label_encode: temperature must be finite and > 0, got ", in.temperature);
  TORCH_CHECK(in.from_logits || in.temperature == 1.0,
              "label_encode: probabilities are coded as given; pass temperature=1 (the store header records the "
              "temperature they were made at)");
  const at::Tensor& t = in.thresholds;
  TORCH_CHECK(t.device() == scores.device(), "label_encode: thresholds are on ", t.device(), " but scores are on ",
              scores.device());
  TORCH_CHECK(t.dim() == 1 && (t.size(0) == 255 || t.size(0) == 65535),
              "label_encode: thresholds must have shape [255] (8-bit codes) or [65535] (16-bit codes), got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "label_encode: thresholds must be float32, got ", t.scalar_type());
  TORCH_CHECK(at::isfinite(t).all().item<bool>(), "label_encode: thresholds must be finite");
  TORCH_CHECK((t.slice(0, 1) >= t.slice(0, 0, -1)).all().item<bool>(),
              "label_encode: thresholds must be sorted in non-decreasing order");
}

// Offline path (relabel, import): one host sync buys a clear error instead of garbage codes.
void raise_encode_status(const at::Tensor& status) {
  const int32_t bad = status.item<int32_t>();
  TORCH_CHECK(!(bad & kBadNaN), "label_encode: scores contain NaN");
  TORCH_CHECK(!(bad & kBadInf), "label_encode: logits must be finite (found +-inf)");
  TORCH_CHECK(!(bad & kBadNegative), "label_encode: probabilities must be >= 0 (found a negative one)");
  TORCH_CHECK(!(bad & kBadAboveOne), "label_encode: probabilities must be <= 1 (found a larger one; are these logits? "
              "pass from_logits)");
  TORCH_CHECK(!(bad & kBadRowSum), "label_encode: probability rows must sum to 1 (a row is off by more than ",
              kRowSumTolerance, "); are these top-k values rather than full distributions?");
}

}  // namespace

EncodeArgs label_encode_checked(const LabelEncodeArgs& in) {
  check_encode_args(in);
  EncodeArgs a;
  a.scores = in.scores.contiguous();
  a.thresholds = in.thresholds.contiguous();
  a.N = a.scores.size(0);
  a.C = a.scores.size(1);
  a.k = in.k;
  a.inv_temperature = 1.0 / in.temperature;
  a.from_logits = in.from_logits;
  const auto opt = a.scores.options();
  const auto id_dtype = a.C <= 65535 ? at::kUInt16 : at::kInt;
  const bool topk = a.k < a.C && a.k <= kMaxEncodeK;
  if (topk) a.ids = at::empty({a.N, a.k}, opt.dtype(id_dtype));
  a.codes = at::empty({a.N, topk ? a.k : a.C}, opt.dtype(a.thresholds.size(0) == 255 ? at::kByte : at::kUInt16));
  a.status = at::zeros({1}, opt.dtype(at::kInt));
  return a;
}

// Returns (ids [N, k], codes [N, k]); with k == C, (ids [N, 0], codes [N, C] in class order).
EncodeResults label_encode_results(EncodeArgs& a) {
  if (a.N > 0) raise_encode_status(a.status);
  const auto opt = a.scores.options();
  const auto id_dtype = a.C <= 65535 ? at::kUInt16 : at::kInt;
  if (!a.full_width()) return {a.ids, a.codes};
  if (a.k == a.C) return {at::empty({a.N, 0}, opt.dtype(id_dtype)), a.codes};
  // kMaxEncodeK < k < C: rank by the scores as the top-k kernel does (larger first, ties to the lower
  // class id: a stable sort) and take each class's code from the full-width row.
  const auto acc = a.scores.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor order =
      std::get<1>(at::sort(a.scores.to(acc), /*stable=*/true, /*dim=*/1, /*descending=*/true)).narrow(1, 0, a.k);
  return {order.to(at::kInt).to(id_dtype), a.codes.to(at::kInt).gather(1, order).to(a.codes.scalar_type())};
}

at::Tensor label_decode(const LabelDecodeArgs& in) {
  check_codebook(in.codes, in.codebook, "label_decode");
  // A gather through a table of at most 65536 entries: the generic index kernel is already optimal,
  // and codes cannot be out of range (their dtype bounds them by the table size).
  const at::Tensor& codes = in.codes;
  at::Tensor idx = codes.scalar_type() == at::kShort ? codes.to(at::kInt).bitwise_and(0xFFFF) : codes.to(at::kInt);
  return in.codebook.index({idx});
}

DenseDecodeArgs label_decode_dense_checked(const LabelDecodeDenseArgs& in) {
  constexpr const char* kOp = "label_decode_dense: ";
  const at::Tensor& codes = in.codes;
  check_codebook(codes, in.codebook, "label_decode_dense");
  TORCH_CHECK(in.num_classes >= 1 && in.num_classes <= std::numeric_limits<int32_t>::max(), kOp,
              "num_classes must be in [1, 2^31), got ", in.num_classes);
  TORCH_CHECK(codes.dim() == 2, kOp, "codes must be 2-D [N, k], got shape ", codes.sizes());
  if (in.ids.has_value()) {
    const at::Tensor& ids = *in.ids;
    TORCH_CHECK(ids.dim() == 2, kOp, "ids must be 2-D [N, k], got shape ", ids.sizes());
    TORCH_CHECK(codes.sizes() == ids.sizes(), kOp, "codes must have the shape of ids ", ids.sizes(), ", got ",
                codes.sizes());
    TORCH_CHECK(ids.device() == codes.device(), kOp, "ids are on ", ids.device(), " but codes are on ",
                codes.device());
    const auto idt = ids.scalar_type();
    TORCH_CHECK(idt == at::kUInt16 || idt == at::kInt || idt == at::kLong, kOp,
                "ids must be uint16, int32 or int64, got ", idt);
  } else {
    TORCH_CHECK(codes.size(1) == in.num_classes, kOp, "without ids, codes are a full-width label in class order "
                "and must be [N, num_classes = ", in.num_classes, "], got ", codes.sizes());
  }
  const int64_t k = codes.size(1);
  TORCH_CHECK(k >= 1 && k <= in.num_classes, kOp, "k = ", k, " must be in [1, num_classes = ", in.num_classes, "]");
  DenseDecodeArgs a;
  // k values per row: converting is cheaper than a dtype switch per load.
  if (in.ids.has_value()) a.ids = in.ids->to(at::kInt).contiguous();
  a.codes = codes.to(at::kInt).bitwise_and(0xFFFF).contiguous();
  a.codebook = in.codebook.contiguous();
  a.N = codes.size(0);
  a.C = in.num_classes;
  a.k = k;
  a.decode = parse_decode_mode(in.decode);
  if (a.N > 0 && a.ids.defined()) {
    // An inspection tool: a host check gives a clear error instead of a write out of bounds.
    const auto mm = at::aminmax(a.ids);
    const int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < in.num_classes, kOp, "class ids must be in [0, ", in.num_classes, "), found ",
                (lo < 0 ? lo : hi));
  }
  a.out = at::empty({a.N, in.num_classes}, a.codebook.options());
  return a;
}

}  // namespace hald

TORCH_LIBRARY_FRAGMENT(hald, m) {
  // Top-k of each row of teacher scores [N, C] (logits at `temperature` when from_logits, else
  // probabilities) -> (class ids [N, k] uint16 / int32, codes [N, k] uint8 / uint16), ids ordered
  // by decreasing probability (ties: lower id first), code = count of thresholds <= probability.
  // 1 <= k <= C; with k == C the label is full width: ids [N, 0] and codes [N, C] in class order.
  m.def(hald::LabelEncodeArgs::schema("label_encode", "(Tensor, Tensor)").c_str());
  // Codes -> float32 probabilities through the codebook.
  m.def(hald::LabelDecodeArgs::schema("label_decode", "Tensor").c_str());
  // Top-k labels -> the dense float32 [N, num_classes] target of the given decode mode (inspection);
  // ids None: codes [N, num_classes] are a full-width label in class order.
  m.def(hald::LabelDecodeDenseArgs::schema("label_decode_dense", "Tensor").c_str());
}
