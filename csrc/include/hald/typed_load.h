// Loads of small per-row side inputs (class ids, stored label values) whose dtype is chosen at run
// time. These are touched k times per row, not C times, so a switch is cheaper than instantiating
// every kernel for every (logits, ids, values) dtype combination.
#pragma once

#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "hald/soft_hard_math.h"

namespace hald {

enum class IdKind : int32_t { I64 = 0, I32 = 1, U16 = 2 /* uint16, or int16 read as unsigned */ };
enum class ValKind : int32_t { F32 = 0, F16 = 1, BF16 = 2, F64 = 3, Code8 = 4, Code16 = 5 };

HALD_HD int64_t load_id(const void* p, int32_t kind, int64_t i) {
  switch (kind) {
    case int32_t(IdKind::I64): return static_cast<const int64_t*>(p)[i];
    case int32_t(IdKind::I32): return static_cast<const int32_t*>(p)[i];
    default: return static_cast<const uint16_t*>(p)[i];
  }
}

// Stored probability j of a row. Codes index the codebook (256 or 65536 fp32 entries).
template <typename acc_t>
HALD_HD acc_t load_value(const void* p, int32_t kind, int64_t i, const float* codebook) {
  switch (kind) {
    case int32_t(ValKind::F32): return acc_t(static_cast<const float*>(p)[i]);
    case int32_t(ValKind::F16): return acc_t(float(static_cast<const c10::Half*>(p)[i]));
    case int32_t(ValKind::BF16): return acc_t(float(static_cast<const c10::BFloat16*>(p)[i]));
    case int32_t(ValKind::F64): return acc_t(static_cast<const double*>(p)[i]);
    case int32_t(ValKind::Code8): return acc_t(codebook[static_cast<const uint8_t*>(p)[i]]);
    default: return acc_t(codebook[static_cast<const uint16_t*>(p)[i]]);
  }
}

}  // namespace hald
