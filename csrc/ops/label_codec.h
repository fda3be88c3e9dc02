// Shared host-side pieces of the label codec ops: validated arguments and the device kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include "hald/label_codec_math.h"

namespace hald {

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

// The device kernels: called by the ops' front functions (label_codec.cpp) after every check.
void label_encode_cpu_kernel(EncodeArgs& a);
void label_encode_cuda_kernel(EncodeArgs& a);
void label_decode_dense_cpu_kernel(DenseDecodeArgs& a);
void label_decode_dense_cuda_kernel(DenseDecodeArgs& a);

}  // namespace hald
