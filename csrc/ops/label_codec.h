// The label codec ops' pieces shared by their backends: the argument lists (written once, below), the
// validated arguments, and the checks every backend runs (label_codec.cpp). Each backend's kernel file
// registers its own kernels (cpu/label_codec_kernel.cpp, cuda/label_codec_kernel.cu).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "hald/label_codec_math.h"
#include "hald/op_front.h"

// The ops' arguments in schema order (the schemas' comments are in label_codec.cpp).
#define HALD_LABEL_ENCODE_ARGS(X) \
  X(Tensor, scores) X(Int, k) X(Float, temperature) X(Bool, from_logits) X(Tensor, thresholds)
#define HALD_LABEL_DECODE_ARGS(X) X(Tensor, codes) X(Tensor, codebook)
#define HALD_LABEL_DECODE_DENSE_ARGS(X) \
  X(OptTensor, ids) X(Tensor, codes) X(Tensor, codebook) X(Int, num_classes) X(Str, decode)

namespace hald {

HALD_DEFINE_OP_ARGS(LabelEncodeArgs, HALD_LABEL_ENCODE_ARGS)
HALD_DEFINE_OP_ARGS(LabelDecodeArgs, HALD_LABEL_DECODE_ARGS)
HALD_DEFINE_OP_ARGS(LabelDecodeDenseArgs, HALD_LABEL_DECODE_DENSE_ARGS)

// label_encode after validation: scores [N, C] contiguous, thresholds fp32 contiguous and sorted,
// outputs allocated (ids uint16 when C <= 65535 else int32; codes uint8 for 255 thresholds, else uint16).
// Two layouts: top-k (k <= kMaxEncodeK: ids [N, k] by decreasing probability, codes [N, k]) and
// full width (k == C: no ids, codes [N, C] in class order). The front function builds any other k
// from the full-width codes.
struct EncodeArgs {
  at::Tensor scores;
  at::Tensor thresholds;
  at::Tensor ids;    // [N, k], or undefined for full width
  at::Tensor codes;  // [N, k] or [N, C]
  at::Tensor status; // int32 [1], zero: the kernel ORs EncodeStatus bits into it
  int64_t N = 0, C = 0, k = 0;
  double inv_temperature = 1.0;  // 1 / T, computed once so every backend scales by the same number
  bool from_logits = false;
  bool full_width() const { return !ids.defined(); }
};

// label_decode_dense after validation: ids [N, k] int32 (or undefined: k == C, class order), codes
// [N, k] int32 contiguous, codebook fp32 contiguous, out fp32 [N, C].
struct DenseDecodeArgs {
  at::Tensor ids, codes, codebook, out;
  int64_t N = 0, C = 0, k = 0;
  int32_t decode = 0;
};

// label_encode around a backend's kernel: every check and the outputs, then `kernel(a)` (rows > 0),
// then the status check and the layout the op returns.
using EncodeResults = std::tuple<at::Tensor, at::Tensor>;
EncodeArgs label_encode_checked(const LabelEncodeArgs& in);
EncodeResults label_encode_results(EncodeArgs& a);
template <void (*kernel)(EncodeArgs&)>
EncodeResults label_encode_with(const LabelEncodeArgs& in) {
  EncodeArgs a = label_encode_checked(in);
  if (a.N > 0) kernel(a);
  return label_encode_results(a);
}

// label_decode_dense around a backend's kernel: every check and the output, then `kernel(a)` (rows > 0).
DenseDecodeArgs label_decode_dense_checked(const LabelDecodeDenseArgs& in);
template <void (*kernel)(DenseDecodeArgs&)>
at::Tensor label_decode_dense_with(const LabelDecodeDenseArgs& in) {
  DenseDecodeArgs a = label_decode_dense_checked(in);
  if (a.N > 0) kernel(a);
  return a.out;
}

// label_decode: a gather through the codebook in ATen ops, the same on every backend.
at::Tensor label_decode(const LabelDecodeArgs& in);

}  // namespace hald
