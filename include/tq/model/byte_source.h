// Read-only bytes of a whole model or tokenizer file: memory-mapped when read from disk (weights
// stay in the page cache, nothing is copied), or an owned buffer (files built in memory by tests).
// Shared by pointer so that weight views (TensorRef) can keep the bytes alive.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tq::model {

class ByteSource {
 public:
  // Maps `path` read-only. Throws tq::Error naming the path when it cannot be opened or mapped.
  static std::shared_ptr<const ByteSource> map_file(const std::string& path);
  // Takes ownership of `bytes`; `name` is used in error messages (e.g. "<memory>").
  static std::shared_ptr<const ByteSource> from_vector(std::vector<uint8_t> bytes, std::string name);

  ~ByteSource();
  ByteSource(const ByteSource&) = delete;
  ByteSource& operator=(const ByteSource&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& name() const { return name_; }

 private:
  ByteSource() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string name_;
  void* map_ = nullptr;  // non-null when mmap'ed; unmapped in the destructor
  size_t map_len_ = 0;
  std::vector<uint8_t> owned_;
};

}  // namespace tq::model
