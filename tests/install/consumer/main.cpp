// A program outside the project, built against the installed package: the format of one page.
#include <cstdio>

#include "tq/kv/cache_format.h"

int main() {
  const tq::CacheFormat f(2, 8, 128, tq::parse_kv_spec("k3v2").format);
  std::printf("page bytes %zu\n", f.page_bytes());
  return f.page_bytes() == 2 * 8 * 16 * 84 ? 0 : 1;  // 16 tokens of 84 bytes per (layer, KV head)
}
