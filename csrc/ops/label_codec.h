// Shared host-side pieces of the label codec ops: validated arguments and the backend entry points.
#pragma once

#include <ATen/core/Tensor.h>

#include "hald/label_codec_math.h"

namespace hald {

// label_encode after validation: scores [N, C] contiguous, thresholds fp32 contiguous and sorted,
// outputs allocated (ids uint16 when C <= 65535 else int32; codes uint8 for 255 thresholds, else uint16).
struct EncodeArgs {
  at::Tensor scores;
  at::Tensor thresholds;
  at::Tensor ids;    // [N, k]
  at::Tensor codes;  // [N, k]
  at::Tensor status; // int32 [1], zero: the kernel ORs EncodeStatus bits into it
  int64_t N = 0, C = 0, k = 0;
  double temperature = 1.0;
  bool from_logits = false;
};

// label_decode_dense after validation: ids / codes [N, k] contiguous, codebook fp32 contiguous,
// out fp32 [N, C].
struct DenseDecodeArgs {
  at::Tensor ids, codes, codebook, out;
  int64_t N = 0, C = 0, k = 0;
  int32_t decode = 0;
};

void label_encode_cpu_kernel(EncodeArgs& a);
void label_encode_cuda_kernel(EncodeArgs& a);
void label_decode_dense_cpu_kernel(DenseDecodeArgs& a);
void label_decode_dense_cuda_kernel(DenseDecodeArgs& a);

using EncodeKernel = void (*)(EncodeArgs&);
using DenseDecodeKernel = void (*)(DenseDecodeArgs&);

std::tuple<at::Tensor, at::Tensor> label_encode_impl(EncodeKernel kernel, const at::Tensor& scores, int64_t k,
                                                     double temperature, bool from_logits,
                                                     const at::Tensor& thresholds);
at::Tensor label_decode_impl(const at::Tensor& codes, const at::Tensor& codebook);
at::Tensor label_decode_dense_impl(DenseDecodeKernel kernel, const at::Tensor& ids, const at::Tensor& codes,
                                   const at::Tensor& codebook, int64_t num_classes, c10::string_view decode);

}  // namespace hald

#define HALD_REGISTER_LABEL_CODEC(KEY, ENCODE, DENSE)                                                        \
  namespace {                                                                                                \
  std::tuple<at::Tensor, at::Tensor> label_encode_##KEY(const at::Tensor& s, int64_t k, double T, bool lg,   \
                                                        const at::Tensor& th) {                              \
    return hald::label_encode_impl(ENCODE, s, k, T, lg, th);                                                 \
  }                                                                                                          \
  at::Tensor label_decode_dense_##KEY(const at::Tensor& i, const at::Tensor& c, const at::Tensor& cb,        \
                                      int64_t C, c10::string_view d) {                                       \
    return hald::label_decode_dense_impl(DENSE, i, c, cb, C, d);                                             \
  }                                                                                                          \
  }                                                                                                          \
  TORCH_LIBRARY_IMPL(hald, KEY, m) {                                                                         \
    m.impl("label_encode", &label_encode_##KEY);                                                             \
    m.impl("label_decode", &hald::label_decode_impl);                                                        \
    m.impl("label_decode_dense", &label_decode_dense_##KEY);                                                 \
  }
