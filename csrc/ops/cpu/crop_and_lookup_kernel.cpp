// CPU kernel of crop_and_lookup.
//
// Two parallel stages over the batch:
//   1. geometry: replay or sample each box and flip, write the boxes used, gather the label rows;
//   2. pixels (samples pulled from a shared counter): for each sample, separable resampling with weights tabulated once per sample:
//      a horizontal pass over the source rows the crop needs (into a float buffer of S columns),
//      then per output row a vertical pass (a weighted sum of whole buffer rows: contiguous,
//      vectorised), CutMix pasting the partner's rows over the box, and one store that folds in
//      /255, mean/std, the output dtype and the layout. The flip costs nothing: the horizontal
//      weight table is built in reverse.
// Float loops are plain `omp simd` loops compiled for AVX-512, AVX2 and baseline x86-64
// (target_clones picks one when the library loads).
//
// Output buffers come from a small pool (OutputPool below): a batch of crops is tens to hundreds of
// MB, larger than the system allocator keeps, so a fresh buffer per call used to be mapped and
// faulted in page by page on every call (9,400 minor faults at batch 64 fp32, more time than the
// crops themselves); a buffer returned by a freed batch is reused instead.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <vector>

#include "../crop_and_lookup.h"

#include "hald/cpu_simd.h"

namespace hald {
namespace {

// Allocator of the CPU crop outputs: when a batch's crops are freed, their buffer is kept (at most
// kMaxCached buffers, kMaxCachedBytes in all; the oldest go back to the system first) and the next
// call asking for the same size takes it, already mapped. A new buffer is aligned to 2 MB and asks
// the kernel for transparent huge pages, so even the first call faults 512x fewer times. Small
// outputs go to the default allocator, which already keeps them. A tensor always owns its buffer
// alone: a buffer is reused only after the tensor (every view of it) is gone.
class OutputPool final : public c10::Allocator {
 public:
  static OutputPool& get() {
    static OutputPool* pool = new OutputPool();  // never destroyed: tensors may outlive static destructors
    return *pool;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kAlign - 1) / kAlign * kAlign;
    void* p = take(bytes);
    if (p == nullptr) {
      TORCH_CHECK(posix_memalign(&p, kAlign, bytes) == 0, "crop_and_lookup: out of memory allocating ", bytes,
                  " bytes of crops");
#ifdef MADV_HUGEPAGE
      madvise(p, bytes, MADV_HUGEPAGE);  // a hint: ignored where huge pages are off
#endif
    }
    return {p, new Block{p, bytes}, &OutputPool::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  static constexpr size_t kMinBytes = size_t(1) << 20;
  static constexpr size_t kAlign = size_t(2) << 20;
  static constexpr size_t kMaxCached = 4;
  static constexpr size_t kMaxCachedBytes = size_t(1) << 30;
  struct Block {
    void* ptr;
    size_t bytes;
  };

  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = free_.size(); i-- > 0;) {  // the most recently freed first (warmest in cache)
      if (free_[i].bytes == bytes) {
        void* p = free_[i].ptr;
        cached_ -= bytes;
        free_.erase(free_.begin() + i);
        return p;
      }
    }
    return nullptr;
  }

  static void release(void* ctx) {
    Block* blk = static_cast<Block*>(ctx);
    const Block b = *blk;
    delete blk;
    std::vector<void*> evicted;
    {
      OutputPool& pool = get();
      std::lock_guard<std::mutex> lock(pool.mu_);
      if (b.bytes > kMaxCachedBytes) {
        evicted.push_back(b.ptr);
      } else {
        pool.free_.push_back(b);
        pool.cached_ += b.bytes;
        while (pool.free_.size() > kMaxCached || pool.cached_ > kMaxCachedBytes) {
          evicted.push_back(pool.free_.front().ptr);
          pool.cached_ -= pool.free_.front().bytes;
          pool.free_.erase(pool.free_.begin());
        }
      }
    }
    for (void* p : evicted) std::free(p);
  }

  std::mutex mu_;
  std::vector<Block> free_;
  size_t cached_ = 0;
};

// Resampling weights of every output coordinate of one axis, zero-padded to `taps` per entry.
struct AxisTable {
  int32_t taps = 0;
  std::vector<int32_t> start, count;
  std::vector<float> w;

  // Every entry gets exactly `taps` taps: the span is moved left where it would run past the
  // source edge and the extra taps weigh zero, so the passes run fixed-length, branch-free loops.
  void build(int32_t n_in, int32_t S, bool antialias, bool reverse) {
    taps = max_taps(n_in, S, antialias);
    taps = taps > n_in ? n_in : taps;
    start.resize(S);
    count.resize(S);
    w.assign(size_t(S) * taps, 0.f);
    for (int32_t i = 0; i < S; ++i) {
      const AxisSpan<double> sp = make_span<double>(n_in, S, reverse ? S - 1 - i : i, antialias);
      const int32_t n = sp.count < taps ? sp.count : taps;  // never more, by max_taps' bound
      const int32_t s0 = sp.start + taps > n_in ? n_in - taps : sp.start;
      start[i] = s0;
      count[i] = taps;
      for (int32_t j = 0; j < n; ++j) w[size_t(i) * taps + (sp.start - s0) + j] = float(sp.weight(j));
    }
  }
  // Source rows [first, last) that outputs [o0, o1) read (starts are non-decreasing in o).
  int32_t first(int32_t o0) const { return start[o0]; }
  int32_t last(int32_t o1) const { return start[o1 - 1] + count[o1 - 1]; }
};

HALD_CLONES void u8_to_f32(const uint8_t* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = float(src[i]);
}

// dst[x, c] for x in [x0, x1): weighted sum of the source pixels of one RGB row. T taps known at
// compile time for the common cases (2: upscaling; 3-6: mild antialiased downscaling) so the loop
// over x vectorises (gathers on AVX2 / AVX-512).
template <int T>
HALD_CLONES void hpass_fixed(const float* src, const int32_t* start, const float* wt, int32_t x0, int32_t x1,
                             float* dst) {
#pragma omp simd
  for (int32_t x = x0; x < x1; ++x) {
    const float* p = src + 3 * start[x];
    const float* w = wt + x * T;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f;
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) {
      a0 += w[j] * p[3 * j];
      a1 += w[j] * p[3 * j + 1];
      a2 += w[j] * p[3 * j + 2];
    }
    dst[3 * x] = a0;
    dst[3 * x + 1] = a1;
    dst[3 * x + 2] = a2;
  }
}

HALD_CLONES void hpass_any(const float* src, const int32_t* start, const float* wt, int32_t taps, int32_t x0,
                           int32_t x1, float* dst) {
  for (int32_t x = x0; x < x1; ++x) {
    const float* p = src + 3 * int64_t(start[x]);
    const float* w = wt + int64_t(x) * taps;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f;
    for (int32_t j = 0; j < taps; ++j) {
      a0 += w[j] * p[3 * j];
      a1 += w[j] * p[3 * j + 1];
      a2 += w[j] * p[3 * j + 2];
    }
    dst[3 * x] = a0;
    dst[3 * x + 1] = a1;
    dst[3 * x + 2] = a2;
  }
}

void hpass_row(const float* src, const AxisTable& t, int32_t x0, int32_t x1, float* dst) {
  const int32_t* st = t.start.data();
  const float* w = t.w.data();
  switch (t.taps) {
    case 1: hpass_fixed<1>(src, st, w, x0, x1, dst); break;
    case 2: hpass_fixed<2>(src, st, w, x0, x1, dst); break;
    case 3: hpass_fixed<3>(src, st, w, x0, x1, dst); break;
    case 4: hpass_fixed<4>(src, st, w, x0, x1, dst); break;
    case 5: hpass_fixed<5>(src, st, w, x0, x1, dst); break;
    case 6: hpass_fixed<6>(src, st, w, x0, x1, dst); break;
    default: hpass_any(src, st, w, t.taps, x0, x1, dst); break;
  }
}

// out[c0:c1] = sum_j w[j] * rows[j * stride + c0 : c1] (contiguous, vectorised).
HALD_CLONES void vpass_row(const float* rows, int64_t stride, const float* w, int32_t n, int64_t c0, int64_t c1,
                           float* out) {
  const float w0 = w[0];
#pragma omp simd
  for (int64_t c = c0; c < c1; ++c) out[c] = w0 * rows[c];
  for (int32_t j = 1; j < n; ++j) {
    const float wj = w[j];
    const float* r = rows + j * stride;
#pragma omp simd
    for (int64_t c = c0; c < c1; ++c) out[c] += wj * r[c];
  }
}

// out[0:n] = sum_j w[j] * src[j * stride + 0 : n], reading uint8 source rows (vectorised).
HALD_CLONES void vpass_u8(const uint8_t* src, int64_t stride, const float* w, int32_t taps, int64_t n, float* out) {
  const float w0 = w[0];
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) out[c] = w0 * float(src[c]);
  for (int32_t j = 1; j < taps; ++j) {
    const float wj = w[j];
    const uint8_t* r = src + j * stride;
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) out[c] += wj * float(r[c]);
  }
}

inline uint16_t f32_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = u + 0x7FFFu + ((u >> 16) & 1u);
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t((u >> 16) | 0x40u) : uint16_t(rounded >> 16);
}

template <typename out_t>
inline out_t from_float(float v) {
  if constexpr (std::is_same_v<out_t, float>) {
    return v;
  } else if constexpr (std::is_same_v<out_t, c10::BFloat16>) {
    return c10::BFloat16(f32_to_bf16_bits(v), c10::BFloat16::from_bits());
  } else {
    return out_t(v);
  }
}

// One output row (S interleaved RGB floats in 0..255) -> normalised, in the output dtype and layout.
template <typename out_t>
HALD_CLONES void store_row(const float* row, int64_t S, const float* scale, const float* shift, out_t* dst,
                           int64_t plane, bool channels_last) {
  const float s0 = scale[0], s1 = scale[1], s2 = scale[2], h0 = shift[0], h1 = shift[1], h2 = shift[2];
  if (channels_last) {
#pragma omp simd
    for (int64_t x = 0; x < S; ++x) {
      dst[3 * x] = from_float<out_t>(row[3 * x] * s0 + h0);
      dst[3 * x + 1] = from_float<out_t>(row[3 * x + 1] * s1 + h1);
      dst[3 * x + 2] = from_float<out_t>(row[3 * x + 2] * s2 + h2);
    }
  } else {
    out_t* d0 = dst;
    out_t* d1 = dst + plane;
    out_t* d2 = dst + 2 * plane;
#pragma omp simd
    for (int64_t x = 0; x < S; ++x) {
      d0[x] = from_float<out_t>(row[3 * x] * s0 + h0);
      d1[x] = from_float<out_t>(row[3 * x + 1] * s1 + h1);
      d2[x] = from_float<out_t>(row[3 * x + 2] * s2 + h2);
    }
  }
}

// Produces the output rows of one sample's crop (interleaved RGB floats, 0..255).
// The separable filter runs in the cheaper order: the vertical pass is a contiguous, vectorised
// weighted sum of whole rows, the horizontal one gathers taps, so the horizontal pass should touch
// as few rows as possible:
//   crop taller than S (downscaling): vertical first, straight from the uint8 rows, once per
//     output row; then the horizontal pass of that one row;
//   crop at most S tall (upscaling): horizontal pass of the (fewer) source rows into a buffer once,
//     then each output row is a vertical pass over buffered rows.
class SampleRenderer {
 public:
  // Prepares outputs [y0, y1) x [x0, x1) of sample geometry g.
  void prepare(const CropArgs& a, const SampleGeom& g, int32_t y0, int32_t y1, int32_t x0, int32_t x1) {
    S_ = a.S;
    ty_.build(g.h, int32_t(S_), a.antialias, false);
    tx_.build(g.w, int32_t(S_), a.antialias, g.flip != 0);
    origin_ = image_origin(image_layout(a), g, &stride_);
    width3_ = int64_t(g.w) * 3;
    horizontal_first_ = g.h <= S_;
    if (horizontal_first_) {
      r0_ = ty_.first(y0);
      const int32_t r1 = ty_.last(y1);
      rows_.resize(size_t(r1 - r0_) * S_ * 3);
      line_.resize(size_t(width3_));
      for (int32_t r = r0_; r < r1; ++r) {
        u8_to_f32(origin_ + r * stride_, line_.data(), width3_);
        hpass_row(line_.data(), tx_, x0, x1, rows_.data() + int64_t(r - r0_) * S_ * 3);
      }
    } else {
      line_.resize(size_t(width3_));
    }
  }

  // out[3*x0 : 3*x1) of output row y.
  void row(int32_t y, int32_t x0, int32_t x1, float* out) {
    const float* wy = ty_.w.data() + int64_t(y) * ty_.taps;
    if (horizontal_first_) {
      vpass_row(rows_.data() + int64_t(ty_.start[y] - r0_) * S_ * 3, S_ * 3, wy, ty_.taps, 3 * int64_t(x0),
                3 * int64_t(x1), out);
    } else {
      vpass_u8(origin_ + int64_t(ty_.start[y]) * stride_, stride_, wy, ty_.taps, width3_, line_.data());
      hpass_row(line_.data(), tx_, x0, x1, out);
    }
  }

 private:
  AxisTable ty_, tx_;
  std::vector<float> rows_, line_;
  const uint8_t* origin_ = nullptr;  // the crop's top-left pixel
  int64_t S_ = 0, stride_ = 0, width3_ = 0;
  int32_t r0_ = 0;
  bool horizontal_first_ = true;
};

template <typename out_t>
void crop_pixels(const CropArgs& a, const std::vector<SampleGeom>& geom, CropOutputs& o) {
  const int64_t S = a.S;
  const int32_t Si = int32_t(S);
  const int64_t* partner = a.mix_partner.defined() ? a.mix_partner.data_ptr<int64_t>() : nullptr;
  const int32_t* mix = a.mix_boxes.defined() ? a.mix_boxes.data_ptr<int32_t>() : nullptr;
  out_t* out = o.crops.data_ptr<out_t>();
  // Samples are handed out one at a time from a shared counter rather than in static blocks: crop
  // sizes (hence costs) vary by 10x within a batch, and a thread that loses its core to another
  // process must not hold back a fixed share of the batch.
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), a.out_rows);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    // Per-thread scratch kept across calls (the pool's threads persist): buffers of up to ~1 MB
    // allocated per call were mapped and faulted in afresh each time (~900 faults per call).
    static thread_local SampleRenderer own, other;
    static thread_local std::vector<float> out_row;
    out_row.resize(size_t(S) * 3);
    for (int64_t b = next.fetch_add(1, std::memory_order_relaxed); b < a.out_rows;
         b = next.fetch_add(1, std::memory_order_relaxed)) {
      own.prepare(a, geom[b], 0, Si, 0, Si);
      // CutMix: the partner's crop replaces this one inside [my0, my1) x [mx0, mx1).
      int32_t my0 = 0, my1 = 0, mx0 = 0, mx1 = 0;
      if (partner != nullptr) {
        my0 = mix[4 * b];
        mx0 = mix[4 * b + 1];
        my1 = mix[4 * b + 2];
        mx1 = mix[4 * b + 3];
        my0 = my0 < 0 ? 0 : my0;
        mx0 = mx0 < 0 ? 0 : mx0;
        my1 = my1 > Si ? Si : my1;
        mx1 = mx1 > Si ? Si : mx1;
        if (my1 > my0 && mx1 > mx0) {
          other.prepare(a, geom[clamp_index(partner[b], a.B)], my0, my1, mx0, mx1);
        } else {
          my1 = my0;  // empty box: nothing to paste
        }
      }
      // NCHW: planes of S*S; channels_last: one S*S*3 block, rows of S*3.
      out_t* dst_b = out + b * 3 * S * S;
      for (int32_t y = 0; y < Si; ++y) {
        own.row(y, 0, Si, out_row.data());
        if (y >= my0 && y < my1) other.row(y, mx0, mx1, out_row.data());
        out_t* dst = a.channels_last ? dst_b + int64_t(y) * S * 3 : dst_b + int64_t(y) * S;
        store_row<out_t>(out_row.data(), S, a.scale, a.shift, dst, S * S, a.channels_last);
      }
    }
  });
}

void gather_label_rows(const CropArgs& a, const std::vector<SampleGeom>& geom, CropOutputs& o, int64_t b0,
                       int64_t b1) {
  const int64_t* slots = a.slots.data_ptr<int64_t>();
  const char* ids = static_cast<const char*>(a.label_ids.const_data_ptr());
  const char* vals = static_cast<const char*>(a.label_values.const_data_ptr());
  char* out_ids = static_cast<char*>(o.label_ids.data_ptr());
  char* out_vals = static_cast<char*>(o.label_values.data_ptr());
  const int64_t id_row = a.k * a.label_ids.element_size(), val_row = a.k * a.label_values.element_size();
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t row = int64_t(geom[b].img) * a.sli + clamp_index(slots[b], a.sli);
    std::memcpy(out_ids + b * id_row, ids + row * id_row, id_row);
    std::memcpy(out_vals + b * val_row, vals + row * val_row, val_row);
  }
}

// The CUDA kernel's band renderer (hald/resample.h) run on the host, block by block and column by
// column, with the CUDA kernel's tiling, CutMix handling, window choice and store: the
// `_crop_and_lookup_band` op, which lets the CPU suite check the CUDA kernel's arithmetic.
template <typename out_t>
void crop_pixels_band(const CropArgs& a, const std::vector<SampleGeom>& geom, CropOutputs& o) {
  const int32_t S = int32_t(a.S);
  const int window = band_window(int32_t(a.Hmax), int32_t(a.Wmax), S, a.antialias);
  const int64_t* partner = a.mix_partner.defined() ? a.mix_partner.data_ptr<int64_t>() : nullptr;
  const int32_t* mix = a.mix_boxes.defined() ? a.mix_boxes.data_ptr<int32_t>() : nullptr;
  const ImageLayout layout = image_layout(a);
  out_t* out = o.crops.data_ptr<out_t>();
  const int64_t plane = int64_t(S) * S;
  const auto source = [&](const SampleGeom& g) {
    int64_t stride = 0;
    const uint8_t* origin = image_origin(layout, g, &stride);
    return CropSource{origin, stride, g.h, g.w, g.flip != 0};
  };
  const auto load = [](const uint8_t* q) { return float(*q); };
  at::parallel_for(0, a.out_rows, 1, [&](int64_t b0, int64_t b1) {
    BandSpans spans[2];
    for (int64_t b = b0; b < b1; ++b) {
      const SampleGeom& g = geom[b];
      int32_t my0 = 0, mx0 = 0, my1 = 0, mx1 = 0;
      SampleGeom gp = g;
      if (partner != nullptr) {
        my0 = std::max(mix[4 * b], 0);
        mx0 = std::max(mix[4 * b + 1], 0);
        my1 = std::min(mix[4 * b + 2], S);
        mx1 = std::min(mix[4 * b + 3], S);
        if (my1 <= my0 || mx1 <= mx0) my1 = my0;
        gp = geom[clamp_index(partner[b], a.B)];
      }
      for (int32_t y0 = 0; y0 < S; y0 += kBand) {
        const bool pasted_band = my1 > my0 && my0 < y0 + kBand && my1 > y0;
        for (int t = 0; t < 2 * kBand; ++t) {
          build_band_row(spans[0], g.h, S, y0, a.antialias, t);
          if (pasted_band) build_band_row(spans[1], gp.h, S, y0, a.antialias, t - kBand);
        }
        for (int32_t x = 0; x < S; ++x) {
          const bool in_box_col = x >= mx0 && x < mx1;
          const auto store = [&](int32_t y, float v0, float v1, float v2) {
            const float v[3] = {v0 * a.scale[0] + a.shift[0], v1 * a.scale[1] + a.shift[1],
                                v2 * a.scale[2] + a.shift[2]};
            for (int c = 0; c < 3; ++c) {
              const int64_t i = a.channels_last ? (b * plane + int64_t(y) * S + x) * 3 + c
                                                : (b * 3 + c) * plane + int64_t(y) * S + x;
              out[i] = from_float<out_t>(v[c]);
            }
          };
          const auto own = [&](int32_t y) { return !(in_box_col && y >= my0 && y < my1); };
          const auto pasted = [&](int32_t y) { return y >= my0 && y < my1; };
          const auto render = [&](auto w) {
            constexpr int W = decltype(w)::value;
            render_band_column<W>(source(g), spans[0], S, a.antialias, y0, x, load, own, store);
            if (pasted_band && in_box_col) {
              render_band_column<W>(source(gp), spans[1], S, a.antialias, y0, x, load, pasted, store);
            }
          };
          switch (window) {
            case 2: render(std::integral_constant<int, 2>{}); break;
            case 4: render(std::integral_constant<int, 4>{}); break;
            case 8: render(std::integral_constant<int, 8>{}); break;
            case kWinMax: render(std::integral_constant<int, kWinMax>{}); break;
            default: render(std::integral_constant<int, 0>{}); break;
          }
        }
      }
    }
  });
}

// Geometry and label rows, then the pixels: the CPU kernel, or (band) the CUDA kernel's renderer.
template <bool band>
void crop_pixels_and_labels(const CropArgs& a, CropOutputs& o) {
  const GeomInputs in = geom_inputs(a);
  std::vector<SampleGeom> geom(a.B);
  float* boxes = o.boxes.data_ptr<float>();
  bool* flips = o.flips.data_ptr<bool>();
  int32_t* g_out = o.geom.data_ptr<int32_t>();
  at::parallel_for(0, a.B, 256, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const SampleGeom g = resolve_sample(in, b, boxes + 4 * b);
      geom[b] = g;
      flips[b] = g.flip != 0;
      std::memcpy(g_out + 6 * b, &g, sizeof(g));
    }
    if (a.label_ids.defined()) gather_label_rows(a, geom, o, b0, b1);
  });
  switch (a.out_dtype) {
    case at::kFloat: band ? crop_pixels_band<float>(a, geom, o) : crop_pixels<float>(a, geom, o); break;
    case at::kHalf: band ? crop_pixels_band<c10::Half>(a, geom, o) : crop_pixels<c10::Half>(a, geom, o); break;
    default:
      band ? crop_pixels_band<c10::BFloat16>(a, geom, o) : crop_pixels<c10::BFloat16>(a, geom, o);
      break;
  }
}

template <bool band>
CropResults crop_and_lookup_cpu(const CropOpArgs& in) {
  const CropArgs a = crop_and_lookup_checked(in);
  CropOutputs o = allocate_crop_outputs(a, &OutputPool::get());
  if (a.B > 0) crop_pixels_and_labels<band>(a, o);
  return crop_results(o);
}

}  // namespace
}  // namespace hald

TORCH_LIBRARY_IMPL(hald, CPU, m) {
  HALD_IMPL_BOXED(m, "crop_and_lookup", hald::CropOpArgs, hald::crop_and_lookup_cpu<false>);
  HALD_IMPL_BOXED(m, "_crop_and_lookup_band", hald::CropOpArgs, hald::crop_and_lookup_cpu<true>);
}
