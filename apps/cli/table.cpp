#include "table.h"

#include <fmt/format.h>

#include <algorithm>

namespace tq::cli {

std::string Table::text() const {
  std::vector<std::vector<std::string>> cells;
  std::vector<size_t> width(cols_.size());
  for (size_t c = 0; c < cols_.size(); ++c) width[c] = cols_[c].header.size();
  for (const auto& row : rows_) {
    std::vector<std::string> line;
    for (size_t c = 0; c < cols_.size(); ++c) {
      std::string s = "-";
      if (row.contains(cols_[c].key)) {
        const auto& v = row[cols_[c].key];
        if (v.is_number_float() && cols_[c].precision >= 0) {
          s = fmt::format("{:.{}f}", v.get<double>(), cols_[c].precision);
        } else if (v.is_string()) {
          s = v.get<std::string>();
        } else if (!v.is_null()) {
          s = v.dump();
        }
      }
      width[c] = std::max(width[c], s.size());
      line.push_back(std::move(s));
    }
    cells.push_back(std::move(line));
  }
  std::string out;
  auto emit = [&](const std::vector<std::string>& line) {
    for (size_t c = 0; c < line.size(); ++c)
      out += c ? fmt::format("  {:>{}}", line[c], width[c]) : fmt::format("{:<{}}", line[c], width[c]);
    out += "\n";
  };
  std::vector<std::string> head;
  for (const auto& c : cols_) head.push_back(c.header);
  emit(head);
  for (const auto& line : cells) emit(line);
  return out;
}

nlohmann::json Table::json() const {
  nlohmann::json j;
  j["rows"] = rows_;
  return j;
}

}  // namespace tq::cli
