// CPU kernels of the label codec. Rows run in parallel; each row is read once for the top-k (a
// sorted list of k entries that almost every element leaves with one compare) and, for logits, once
// more for the softmax normaliser.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>

#include "../label_codec.h"

namespace hald {
namespace {

// Top-k layout (ids != nullptr): ids and codes of the k best entries. Full width (ids == nullptr):
// the code of every class in class order. Both compute a probability the same way, so a class gets
// the same code in either layout.
template <typename scalar_t, typename id_t, typename code_t>
void encode_rows(EncodeArgs& a) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const scalar_t* scores = a.scores.const_data_ptr<scalar_t>();
  const float* thr = a.thresholds.const_data_ptr<float>();
  const int32_t n_thr = int32_t(a.thresholds.size(0));
  const bool full = a.full_width();
  id_t* ids = full ? nullptr : a.ids.data_ptr<id_t>();
  code_t* codes = a.codes.data_ptr<code_t>();
  const int64_t C = a.C, k = a.k;
  const acc_t invT = acc_t(a.inv_temperature);
  const int64_t grain = std::max<int64_t>(1, 16384 / C);
  std::atomic<int32_t> status{0};
  at::parallel_for(0, a.N, grain, [&](int64_t r0, int64_t r1) {
    TopkList<acc_t> top;
    int32_t bad = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* row = scores + r * C;
      top.reset(full ? 1 : int(k));  // full width only needs the maximum
      double row_sum = 0;
      for (int64_t c = 0; c < C; ++c) {
        const acc_t x = acc_t(row[c]);
        bad |= score_status(x, a.from_logits);
        row_sum += double(x);
        top.offer(x, int32_t(c));
      }
      if (!a.from_logits && std::abs(row_sum - 1.0) > kRowSumTolerance) bad |= kBadRowSum;
      const acc_t m = top.v[0];
      acc_t norm = 1;  // probabilities: as given
      if (a.from_logits) {
        // softmax(z / T): the maximum is the first top-k entry, so one more pass gives the normaliser.
        acc_t s = 0;
        for (int64_t c = 0; c < C; ++c) s += std::exp((acc_t(row[c]) - m) * invT);
        norm = acc_t(1) / s;
      }
      const auto code_of = [&](acc_t x) {
        const acc_t p = a.from_logits ? std::exp((x - m) * invT) * norm : x;
        return code_t(encode_code(float(p), thr, n_thr));
      };
      if (full) {
        for (int64_t c = 0; c < C; ++c) codes[r * C + c] = code_of(acc_t(row[c]));
      } else {
        for (int64_t j = 0; j < k; ++j) {
          ids[r * k + j] = id_t(top.id[j]);
          codes[r * k + j] = code_of(top.v[j]);
        }
      }
    }
    if (bad) status.fetch_or(bad, std::memory_order_relaxed);
  });
  a.status.fill_(status.load());
}

template <typename scalar_t>
void encode_dispatch_outputs(EncodeArgs& a) {
  const bool ids16 = a.C <= 65535;  // the id dtype, also for full width (no ids: one instantiation fewer)
  const bool codes8 = a.codes.scalar_type() == at::kByte;
  if (ids16 && codes8) encode_rows<scalar_t, uint16_t, uint8_t>(a);
  else if (ids16) encode_rows<scalar_t, uint16_t, uint16_t>(a);
  else if (codes8) encode_rows<scalar_t, int32_t, uint8_t>(a);
  else encode_rows<scalar_t, int32_t, uint16_t>(a);
}

void label_encode_cpu_kernel(EncodeArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scores.scalar_type(), "label_encode_cpu",
                                  [&] { encode_dispatch_outputs<scalar_t>(a); });
}

void label_decode_dense_cpu_kernel(DenseDecodeArgs& a) {
  const int32_t* ids = a.ids.defined() ? a.ids.const_data_ptr<int32_t>() : nullptr;  // nullptr: class order
  const int32_t* codes = a.codes.const_data_ptr<int32_t>();
  const float* cb = a.codebook.const_data_ptr<float>();
  float* out = a.out.data_ptr<float>();
  const int64_t C = a.C, k = a.k;
  at::parallel_for(0, a.N, std::max<int64_t>(1, 32768 / C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float sp = 0;
      for (int64_t j = 0; j < k; ++j) sp += cb[codes[r * k + j]];
      const DenseDecodeRow d = dense_decode_row(sp, C, k, a.decode);
      float* q = out + r * C;
      std::fill(q, q + C, d.other);
      for (int64_t j = 0; j < k; ++j) q[ids != nullptr ? ids[r * k + j] : j] = d.scale * cb[codes[r * k + j]];
    }
  });
}

}  // namespace
}  // namespace hald

TORCH_LIBRARY_IMPL(hald, CPU, m) {
  HALD_IMPL_BOXED(m, "label_encode", hald::LabelEncodeArgs, hald::label_encode_with<&hald::label_encode_cpu_kernel>);
  HALD_IMPL_BOXED(m, "label_decode", hald::LabelDecodeArgs, hald::label_decode);
  HALD_IMPL_BOXED(m, "label_decode_dense", hald::LabelDecodeDenseArgs,
                  hald::label_decode_dense_with<&hald::label_decode_dense_cpu_kernel>);
}
