#include "host_buffer.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <stdexcept>
#include <system_error>

namespace sc {

HostBuffer::HostBuffer(uint64_t nbytes) : nbytes_(nbytes) {
  if (nbytes == 0) throw std::invalid_argument("HostBuffer size must be positive");
  bool huge = nbytes >= kHuge;
  map_bytes_ = huge ? nbytes + kHuge : nbytes;
  void* p = ::mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap staging buffer");
  map_ = static_cast<uint8_t*>(p);
  ptr_ = map_;
  if (huge) {
    auto a = reinterpret_cast<uintptr_t>(map_);
    ptr_ = map_ + ((kHuge - a % kHuge) % kHuge);
#ifdef MADV_HUGEPAGE
    ::madvise(ptr_, map_bytes_ - static_cast<uint64_t>(ptr_ - map_), MADV_HUGEPAGE);  // advisory
#endif
  }
}

HostBuffer::~HostBuffer() {
  if (map_) ::munmap(map_, map_bytes_);
}

void HostBuffer::prefault() {
#ifdef MADV_POPULATE_WRITE
  if (::madvise(ptr_, nbytes_, MADV_POPULATE_WRITE) == 0) return;
#endif
  for (uint64_t i = 0; i < nbytes_; i += 4096) ptr_[i] = 0;
}

}  // namespace sc
