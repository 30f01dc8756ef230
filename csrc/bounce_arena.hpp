// Aligned memory for unaligned O_DIRECT reads issued in the io_uring ring
// (uring.cpp): a read of [off, off+len) into an unaligned address becomes an
// aligned read of [round_down(off), round_up(off+len)) into arena units,
// copied to its destination when it lands.
//
// The arena is a few chunks mapped on demand: the first when the first
// unaligned read comes, another only when a piece finds no room (a ring of
// large pieces with their copies still running), up to max_chunks. Units
// are handed out first-fit from a cursor (pieces complete roughly in
// submission order); a run of units never crosses a chunk, so each piece's
// memory lies in one mapping (one registered buffer). Not thread-safe: the
// backend guards it with its mutex.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace sc {

class BounceArena {
 public:
  // chunk_bytes: a multiple of unit.
  BounceArena(uint64_t chunk_bytes, uint64_t unit, unsigned max_chunks)
      : chunk_bytes_(chunk_bytes), unit_(unit), per_chunk_(chunk_bytes / unit), max_chunks_(max_chunks) {
    chunks_.reserve(max_chunks);  // never reallocated: other threads read the chunks while one grows
  }
  BounceArena(const BounceArena&) = delete;
  BounceArena& operator=(const BounceArena&) = delete;
  ~BounceArena() {
    for (const Chunk& c : chunks_) ::munmap(c.map, c.map_bytes);
  }

  // Maps one more chunk, 2 MiB aligned with transparent huge pages asked for
  // (a 1 MiB read then is one or two device segments): its index, or -1 at
  // max_chunks or when the memory cannot be had.
  int grow() {
    if (chunks_.size() >= max_chunks_) return -1;
    constexpr uint64_t kHuge = 2ull << 20;
    Chunk c;
    c.map_bytes = chunk_bytes_ + kHuge;
    void* p = ::mmap(nullptr, c.map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -1;
    c.map = static_cast<uint8_t*>(p);
    auto a = reinterpret_cast<uintptr_t>(c.map);
    c.base = c.map + ((kHuge - a % kHuge) % kHuge);
#ifdef MADV_HUGEPAGE
    ::madvise(c.base, chunk_bytes_, MADV_HUGEPAGE);  // advisory
#endif
    chunks_.push_back(c);
    used_.resize(used_.size() + per_chunk_, 0);
    return static_cast<int>(chunks_.size() - 1);
  }

  unsigned chunks() const { return static_cast<unsigned>(chunks_.size()); }
  uint8_t* chunk_base(unsigned i) const { return chunks_[i].base; }
  uint64_t chunk_bytes() const { return chunk_bytes_; }
  uint32_t units_for(uint64_t nbytes) const { return static_cast<uint32_t>((nbytes + unit_ - 1) / unit_); }
  unsigned chunk_of(uint32_t unit) const { return static_cast<unsigned>(unit / per_chunk_); }
  uint8_t* at(uint32_t unit) const { return chunks_[unit / per_chunk_].base + (unit % per_chunk_) * unit_; }

  // First unit of `n` free consecutive units (inside one chunk), marked
  // used; -1 when there is no such run now.
  int64_t alloc(uint32_t n) {
    size_t total = used_.size();
    if (n == 0 || n > per_chunk_ || total == 0) return -1;
    for (int pass = 0; pass < 2; ++pass) {
      size_t i = pass == 0 ? cursor_ : 0;
      size_t end = pass == 0 ? total : std::min(cursor_ + n, total);
      size_t run = 0;
      for (; i < end; ++i) {
        if (i % per_chunk_ == 0) run = 0;  // runs stay inside a chunk
        run = used_[i] ? 0 : run + 1;
        if (run == n) {
          size_t first = i + 1 - n;
          std::fill(used_.begin() + first, used_.begin() + first + n, 1);
          cursor_ = (first + n) % total;
          return static_cast<int64_t>(first);
        }
      }
    }
    return -1;
  }

  void release(uint32_t first, uint32_t n) { std::fill(used_.begin() + first, used_.begin() + first + n, 0); }

 private:
  struct Chunk {
    uint8_t* map = nullptr;
    uint64_t map_bytes = 0;
    uint8_t* base = nullptr;
  };
  uint64_t chunk_bytes_, unit_, per_chunk_;
  unsigned max_chunks_;
  std::vector<Chunk> chunks_;
  std::vector<uint8_t> used_;
  size_t cursor_ = 0;
};

}  // namespace sc
