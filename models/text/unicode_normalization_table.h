// The Unicode data behind normalize_unicode, to_lower and is_other_category (tokenizer_unicode.cpp), generated into unicode_normalization_table.cpp by
// tools/gen_unicode_normalization.py (see there for the Unicode version and source files).
#pragma once

#include <cstddef>
#include <cstdint>

namespace sinkflow::unicode_data {

struct CombiningClassRun {
  uint32_t first;
  uint32_t last;
  uint8_t combining_class;  // canonical combining class, 1..254
};

struct Decomposition {
  uint32_t code_point;
  uint16_t offset;  // into kDecompositionPool
  uint8_t length;
  uint8_t flags;    // kCompatibility | kNotComposite
};
constexpr uint8_t kCompatibility = 1;
constexpr uint8_t kNotComposite = 2;

struct CodePointRange {
  uint32_t first;
  uint32_t last;
};

struct LowercaseRun {
  uint32_t first;
  uint32_t last;
  int32_t delta;
  uint32_t stride;
};

extern const char* const kUnicodeVersion;
extern const LowercaseRun kLowercaseRuns[];  // sorted by first
extern const size_t kLowercaseRunCount;
extern const CodePointRange kOtherCategoryRanges[];  // sorted
extern const size_t kOtherCategoryRangeCount;
extern const CombiningClassRun kCombiningClassRuns[];  // sorted by first
extern const size_t kCombiningClassRunCount;
extern const Decomposition kDecompositions[];  // sorted by code_point
extern const size_t kDecompositionCount;
extern const uint32_t kDecompositionPool[];

}  // namespace sinkflow::unicode_data
