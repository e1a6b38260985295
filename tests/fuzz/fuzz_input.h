// Helpers shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>

namespace tq::fuzz {

// Two inputs from one: [u16 little-endian n][n bytes of text][the rest]. The text comes first and
// is short so that mutations of a seed hit both parts; n beyond the input takes all of it.
inline std::pair<std::string_view, std::string_view> split_text(const uint8_t* data, size_t size) {
  if (size < 2) return {{}, {}};
  const size_t n = std::min<size_t>(size_t(data[0]) | size_t(data[1]) << 8, size - 2);
  const char* p = reinterpret_cast<const char*>(data) + 2;
  return {std::string_view(p, n), std::string_view(p + n, size - 2 - n)};
}

}  // namespace tq::fuzz
