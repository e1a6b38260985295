#include "tq/serve/text_stream.h"

#include <algorithm>

namespace tq::serve {

size_t utf8_characters(std::string_view s) {
  size_t n = 0;
  for (const char c : s) n += (uint8_t(c) & 0xC0) != 0x80;
  return n;
}

size_t utf8_complete_prefix(std::string_view s) {
  // Only a character cut at the end is incomplete: look back at most 3 bytes for its lead byte.
  const size_t n = s.size();
  for (size_t back = 1; back <= std::min<size_t>(3, n); ++back) {
    const unsigned char c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: the lead is further back
    const size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    return back < len ? n - back : n;
  }
  return n;
}

TextStream::TextStream(const model::Tokenizer& tok, int prev, std::vector<std::string> stops)
    : tok_(tok), prev_(prev), stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
  for (const std::string& s : stops_) hold_ = std::max(hold_, s.size() - 1);
}

std::string TextStream::release(bool final) {
  // A stop string ends the text where it starts.
  size_t cut = std::string::npos;
  for (const std::string& s : stops_) cut = std::min(cut, pending_.find(s));
  if (cut != std::string::npos) {
    pending_.resize(cut);
    stopped_ = true;
    final = true;
  }
  size_t n = pending_.size();
  if (!final) {
    n = n > hold_ ? n - hold_ : 0;  // a stop string may be starting in the last hold_ bytes
    n = utf8_complete_prefix(std::string_view(pending_).substr(0, n));
  }
  std::string out = pending_.substr(0, n);
  pending_.erase(0, n);
  if (final) {
    const size_t whole = utf8_complete_prefix(out);
    if (whole < out.size()) out.replace(whole, std::string::npos, "\xEF\xBF\xBD");  // U+FFFD for a cut character
  }
  text_ += out;
  return out;
}

std::string TextStream::push(int token) {
  if (stopped_) return "";
  pending_ += tok_.decode_next(prev_, token);
  prev_ = token;
  return release(false);
}

std::string TextStream::finish() { return stopped_ ? "" : release(true); }

}  // namespace tq::serve
