// Schema and argument checks of the label codec (top-k encode to quantised codes, decode), shared by
// every backend. Encoding runs offline (relabel, import), so its checks may read values on the host
// (NaN / negative probabilities are refused here rather than coded into garbage); the decoders only
// check what is cheap, since the label store validates ids and codes when it opens a file.
#include "label_codec.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

namespace hald {

namespace {

int32_t parse_decode_mode(c10::string_view s) {
  if (s == "marginal") return int32_t(Decode::Marginal);
  if (s == "renorm") return int32_t(Decode::Renorm);
  if (s == "truncate") return int32_t(Decode::Truncate);
  TORCH_CHECK(false, "label_decode_dense: decode must be 'marginal', 'renorm' or 'truncate', got '", std::string(s),
              "'");
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

}  // namespace

std::tuple<at::Tensor, at::Tensor> label_encode_impl(EncodeKernel kernel, const at::Tensor& scores, int64_t k,
                                                     double temperature, bool from_logits,
                                                     const at::Tensor& thresholds) {
  TORCH_CHECK(scores.dim() == 2, "label_encode: scores must be 2-D [N, C], got shape ", scores.sizes());
  const auto dt = scores.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
              "label_encode: scores must be float32, float16, bfloat16 or float64, got ", dt);
  const int64_t N = scores.size(0), C = scores.size(1);
  TORCH_CHECK(C >= 1 && C <= std::numeric_limits<int32_t>::max(), "label_encode: the class count C = ", C,
              " must be in [1, 2^31)");
  TORCH_CHECK(k >= 1 && k <= C && k <= kMaxEncodeK, "label_encode: k = ", k, " must be in [1, min(C = ", C, ", ",
              kMaxEncodeK, ")]");
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, "label_encode: temperature must be finite and > 0, got ",
              temperature);
  TORCH_CHECK(from_logits || temperature == 1.0,
              "label_encode: probabilities are coded as given; pass temperature=1 (the store header records the "
              "temperature they were made at)");
  TORCH_CHECK(thresholds.device() == scores.device(), "label_encode: thresholds are on ", thresholds.device(),
              " but scores are on ", scores.device());
  TORCH_CHECK(thresholds.dim() == 1 && (thresholds.size(0) == 255 || thresholds.size(0) == 65535),
              "label_encode: thresholds must have shape [255] (8-bit codes) or [65535] (16-bit codes), got ",
              thresholds.sizes());
  TORCH_CHECK(thresholds.scalar_type() == at::kFloat, "label_encode: thresholds must be float32, got ",
              thresholds.scalar_type());

  EncodeArgs a;
  a.scores = scores.contiguous();
  a.thresholds = thresholds.contiguous();
  a.N = N;
  a.C = C;
  a.k = k;
  a.temperature = temperature;
  a.from_logits = from_logits;
  TORCH_CHECK(at::isfinite(a.thresholds).all().item<bool>(), "label_encode: thresholds must be finite");
  if (a.thresholds.size(0) > 1) {
    TORCH_CHECK((a.thresholds.slice(0, 1) >= a.thresholds.slice(0, 0, -1)).all().item<bool>(),
                "label_encode: thresholds must be sorted in non-decreasing order");
  }
  a.ids = at::empty({N, k}, scores.options().dtype(C <= 65535 ? at::kUInt16 : at::kInt));
  a.codes = at::empty({N, k}, scores.options().dtype(a.thresholds.size(0) == 255 ? at::kByte : at::kUInt16));
  a.status = at::zeros({1}, scores.options().dtype(at::kInt));
  if (N == 0) return {a.ids, a.codes};
  kernel(a);
  // Offline path (relabel, import): one host sync buys a clear error instead of garbage codes.
  const int32_t bad = a.status.item<int32_t>();
  TORCH_CHECK(!(bad & kBadNaN), "label_encode: scores contain NaN");
  TORCH_CHECK(!(bad & kBadInf), "label_encode: logits must be finite (found +-inf)");
  TORCH_CHECK(!(bad & kBadNegative), "label_encode: probabilities must be >= 0 (found a negative one)");
  TORCH_CHECK(!(bad & kBadAboveOne), "label_encode: probabilities must be <= 1 (found a larger one; are these logits? "
              "pass from_logits)");
  TORCH_CHECK(!(bad & kBadRowSum), "label_encode: probability rows must sum to 1 (a row is off by more than ",
              kRowSumTolerance, "); are these top-k values rather than full distributions?");
  return {a.ids, a.codes};
}

at::Tensor label_decode_impl(const at::Tensor& codes, const at::Tensor& codebook) {
  check_codebook(codes, codebook, "label_decode");
  // A gather through a table of at most 65536 entries: the generic index kernel is already optimal,
  // and codes cannot be out of range (their dtype bounds them by the table size).
  at::Tensor idx = codes.scalar_type() == at::kShort ? codes.to(at::kInt).bitwise_and(0xFFFF) : codes.to(at::kInt);
  return codebook.index({idx});
}

at::Tensor label_decode_dense_impl(DenseDecodeKernel kernel, const at::Tensor& ids, const at::Tensor& codes,
                                   const at::Tensor& codebook, int64_t num_classes, c10::string_view decode) {
  check_codebook(codes, codebook, "label_decode_dense");
  TORCH_CHECK(ids.dim() == 2, "label_decode_dense: ids must be 2-D [N, k], got shape ", ids.sizes());
  TORCH_CHECK(codes.sizes() == ids.sizes(), "label_decode_dense: codes must have the shape of ids ", ids.sizes(),
              ", got ", codes.sizes());
  TORCH_CHECK(ids.device() == codes.device(), "label_decode_dense: ids are on ", ids.device(), " but codes are on ",
              codes.device());
  const auto idt = ids.scalar_type();
  TORCH_CHECK(idt == at::kUInt16 || idt == at::kInt || idt == at::kLong, "label_decode_dense: ids must be uint16, "
              "int32 or int64, got ", idt);
  TORCH_CHECK(num_classes >= 1 && num_classes <= std::numeric_limits<int32_t>::max(),
              "label_decode_dense: num_classes must be in [1, 2^31), got ", num_classes);
  const int64_t k = ids.size(1);
  TORCH_CHECK(k >= 1 && k <= num_classes, "label_decode_dense: k = ", k, " must be in [1, num_classes = ", num_classes,
              "]");
  DenseDecodeArgs a;
  a.ids = ids.to(at::kInt).contiguous();  // k values per row: converting is cheaper than a dtype switch per load
  a.codes = codes.to(at::kInt).bitwise_and(0xFFFF).contiguous();
  a.codebook = codebook.contiguous();
  a.N = ids.size(0);
  a.C = num_classes;
  a.k = k;
  a.decode = parse_decode_mode(decode);
  if (a.N > 0) {
    // An inspection tool: a host check gives a clear error instead of a write out of bounds.
    const auto mm = at::aminmax(a.ids);
    const int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < num_classes, "label_decode_dense: class ids must be in [0, ", num_classes,
                "), found ", (lo < 0 ? lo : hi));
  }
  a.out = at::empty({a.N, num_classes}, codebook.options());
  if (a.N > 0) kernel(a);
  return a.out;
}

}  // namespace hald

TORCH_LIBRARY_FRAGMENT(hald, m) {
  // Top-k of each row of teacher scores [N, C] (logits at `temperature` when from_logits, else
  // probabilities) -> (class ids [N, k] uint16 / int32, codes [N, k] uint8 / uint16), ids ordered
  // by decreasing probability (ties: lower id first), code = count of thresholds <= probability.
  m.def("label_encode(Tensor scores, int k, float temperature, bool from_logits, Tensor thresholds) -> (Tensor, Tensor)");
  // Codes -> float32 probabilities through the codebook.
  m.def("label_decode(Tensor codes, Tensor codebook) -> Tensor");
  // Top-k labels -> the dense float32 [N, num_classes] target of the given decode mode (inspection).
  m.def("label_decode_dense(Tensor ids, Tensor codes, Tensor codebook, int num_classes, str decode) -> Tensor");
}
