// io_uring backend. Built only when liburing's headers exist at build time
// (STORECOMP_HAVE_LIBURING); permission is probed at run time, because
// container seccomp profiles often refuse io_uring_setup.
#pragma once

#include <memory>
#include <string>

#include "engine.hpp"

namespace sc {

class UringBackend {
 public:
  virtual ~UringBackend() = default;
  virtual void submit(Piece* const* pieces, size_t n) = 0;
  virtual bool register_buffer(uintptr_t addr, uint64_t len) = 0;
  virtual void unregister_buffer(uintptr_t addr) = 0;
  virtual void shutdown() = 0;
};

// nullptr (with *reason set) when the ring cannot be created. split_bytes
// (the largest piece) sizes the bounce arena for unaligned O_DIRECT reads.
std::unique_ptr<UringBackend> make_uring(unsigned queue_depth, ThreadPool& pool, Stats& stats,
                                         uint64_t align, uint64_t split_bytes, std::string* reason);

}  // namespace sc
