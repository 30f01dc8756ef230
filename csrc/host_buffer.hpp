// One aligned, zero-filled host allocation: the buffer behind
// storecomp.io.HostBuffer (staging slots, KV chunk buffers, bounce areas).
//
// Buffers of 2 MiB and more start on a 2 MiB boundary and ask for
// transparent huge pages (madvise, advisory): a 1 MiB O_DIRECT read into
// 4 KiB pages is 256 segments, more than many block devices take in one
// request (virtio-blk: 254), so the kernel splits it in two; in a huge page
// it is one segment.
#pragma once

#include <cstdint>

namespace sc {

class HostBuffer {
 public:
  static constexpr uint64_t kHuge = 2ull << 20;

  // Throws std::invalid_argument for 0 bytes, std::system_error when mmap fails.
  explicit HostBuffer(uint64_t nbytes);
  ~HostBuffer();
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  uint8_t* data() const { return ptr_; }
  uintptr_t address() const { return reinterpret_cast<uintptr_t>(ptr_); }
  uint64_t nbytes() const { return nbytes_; }
  // Maps every page now so that first use does not pay page faults: one
  // madvise(MADV_POPULATE_WRITE) (Linux 5.14+), else a touch per page.
  void prefault();

 private:
  uint8_t* map_ = nullptr;  // what mmap returned (the start of ptr_'s mapping)
  uint8_t* ptr_ = nullptr;  // the buffer: map_ rounded up to kHuge for large buffers
  uint64_t nbytes_ = 0;
  uint64_t map_bytes_ = 0;
};

}  // namespace sc
