// Text helpers of the spec and flag parsers (KV specs, --spec, comma lists).
#pragma once

#include <charconv>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tq {

// "a:b::c" -> {"a", "b", "", "c"}: every field, empty ones kept (the callers refuse them by name).
inline std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == sep) {
      out.emplace_back(s.substr(start, i - start));
      start = i + 1;
    }
  return out;
}

// The whole of `s` as a decimal unsigned number; nothing when empty, not all digits, or above 2^64 - 1.
inline std::optional<uint64_t> parse_uint(std::string_view s) {
  uint64_t v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace tq
