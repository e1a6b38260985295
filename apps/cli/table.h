// A result table printed either aligned for people or as JSON ({"rows": [...]}) for programs.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace tq::cli {

struct Column {
  std::string key;     // JSON key
  std::string header;  // column header
  int precision = -1;  // digits after the point for numbers; -1: as is
};

class Table {
 public:
  explicit Table(std::vector<Column> cols) : cols_(std::move(cols)) {}
  // Adds a row; values by column key. Missing keys print "-" and are omitted from JSON.
  void add(nlohmann::json row) { rows_.push_back(std::move(row)); }
  const std::vector<nlohmann::json>& rows() const { return rows_; }
  nlohmann::json& rows_back() { return rows_.back(); }
  std::string text() const;
  nlohmann::json json() const;

 private:
  std::vector<Column> cols_;
  std::vector<nlohmann::json> rows_;
};

}  // namespace tq::cli
