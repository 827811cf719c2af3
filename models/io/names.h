// One name table per enum, read both ways: parsing, printing and the "expected one of ..." message all come
// from it (as llama.cpp's LLM_ARCH_NAMES). Each enum's table sits beside the enum:
//
//   enum class Policy { dense, sink };
//   inline constexpr NameTable<Policy, 2> kPolicyNames{{{{Policy::dense, "dense"}, {Policy::sink, "sink"}}}};
//   enum_name(kPolicyNames, Policy::sink)            -> "sink"
//   enum_from_name(kPolicyNames, "sink", "policy")   -> Policy::sink; "streaming" throws std::invalid_argument
//                                                       "unknown policy 'streaming': expected dense or sink"
#pragma once

#include <array>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sinkflow {

template <class E, size_t N>
struct NameTable {
  std::array<std::pair<E, const char*>, N> entries;
};

template <class E, size_t N>
const char* enum_name(const NameTable<E, N>& table, E value) {
  for (const auto& [e, name] : table.entries)
    if (e == value) return name;
  return "?";
}

// The names in table order.
template <class E, size_t N>
std::vector<std::string> enum_names(const NameTable<E, N>& table) {
  std::vector<std::string> out;
  for (const auto& entry : table.entries) out.push_back(entry.second);
  return out;
}

// "a, b or c".
template <class E, size_t N>
std::string enum_choices(const NameTable<E, N>& table) {
  std::string out;
  for (size_t i = 0; i < N; ++i) out += (i == 0 ? "" : i + 1 == N ? " or " : ", ") + std::string(table.entries[i].second);
  return out;
}

// True and sets `out` when `name` is in the table.
template <class E, size_t N>
bool enum_lookup(const NameTable<E, N>& table, std::string_view name, E& out) {
  for (const auto& [e, n] : table.entries)
    if (name == n) {
      out = e;
      return true;
    }
  return false;
}

// The value named `name`; std::invalid_argument "unknown <what> '<name>': expected a, b or c" otherwise.
template <class E, size_t N>
E enum_from_name(const NameTable<E, N>& table, std::string_view name, std::string_view what) {
  E out{};
  if (enum_lookup(table, name, out)) return out;
  throw std::invalid_argument("unknown " + std::string(what) + " '" + std::string(name) + "': expected " +
                              enum_choices(table));
}

}  // namespace sinkflow
