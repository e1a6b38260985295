#include "tq/model/byte_source.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "tq/check.h"

namespace tq::model {

std::shared_ptr<const ByteSource> ByteSource::map_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TQ_CHECK(fd >= 0, "cannot open '{}': {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(fmt::format("cannot stat '{}': {}", path, std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(fmt::format("'{}' is not a regular file", path));
  }
  std::shared_ptr<ByteSource> src(new ByteSource());
  src->name_ = path;
  const size_t len = size_t(st.st_size);
  if (len > 0) {  // mmap of length 0 fails: an empty file is simply an empty source
    void* p = ::mmap(nullptr, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw Error(fmt::format("cannot mmap '{}' ({} bytes): {}", path, len, std::strerror(err)));
    }
    src->map_ = p;
    src->map_len_ = len;
    src->data_ = static_cast<const uint8_t*>(p);
    src->size_ = len;
  }
  ::close(fd);  // the mapping stays valid after the descriptor is closed
  return src;
}

std::shared_ptr<const ByteSource> ByteSource::from_vector(std::vector<uint8_t> bytes, std::string name) {
  std::shared_ptr<ByteSource> src(new ByteSource());
  src->owned_ = std::move(bytes);
  src->data_ = src->owned_.data();
  src->size_ = src->owned_.size();
  src->name_ = std::move(name);
  return src;
}

ByteSource::~ByteSource() {
  if (map_ != nullptr) ::munmap(map_, map_len_);
}

}  // namespace tq::model
