// Batched strided memory copies (the KV-cache gather and scatter between an
// engine's cache tensors and chunk buffers).
//
// One call moves many 3-D regions: `outer` x `rows` rows of `row_bytes`,
// each end with its own outer and row strides, each end addressed as an
// offset into a region (base address and size) so that every op is
// bounds-checked before any byte moves. Of an op's two loop orders the one
// touching fewer concurrent address streams runs (a sparse walk that leaves
// gaps for a later pass is the slow case). Large batches use non-temporal
// stores: a loop of 32 KiB memcpys from shuffled cache blocks reaches about
// 0.7x of one large memcpy (each destination line is read before it is
// written), streaming stores reach it. Optionally spread over threads by
// bytes, on the process's one copy pool.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>

namespace sc {

struct CopyRegion {
  uintptr_t addr;
  uint64_t size;
};

// Column order of one op (int64): dst region, dst offset, src region, src
// offset, outer count, dst outer stride, src outer stride, rows, dst row
// stride, src row stride, row bytes.
constexpr size_t kCopyOpCols = 11;

// Checks every op against its regions; returns "" when all are in bounds,
// else a message naming the first bad op.
std::string check_copy_ops(const int64_t* ops, size_t n, const CopyRegion* dst, size_t ndst, const CopyRegion* src,
                           size_t nsrc);

// Runs checked ops. nontemporal: 1 streaming stores, 0 plain memcpy, -1
// streaming when the batch is at least 4 MiB. threads >= 1 (more are used
// only for batches of at least 1 MiB per thread). Ops whose destinations
// overlap give an unspecified (but in-bounds) result.
void run_copy_ops(const int64_t* ops, size_t n, const CopyRegion* dst, const CopyRegion* src, unsigned threads,
                  int nontemporal);

// One copy of n bytes with streaming (non-temporal) stores where the CPU
// has them, fenced before it returns: the destination's lines are not read
// before they are written (a third less memory traffic than memcpy for a
// copy much larger than the cache; a bounce out of an aligned area into a
// user's buffer, whose bytes the caller reads later, is one).
void stream_memcpy(void* dst, const void* src, size_t n);

// Copies len bytes out of a file mapping (src) into dst, computing the
// crc32c of chunks in the same pass (crc32c_copy: the carry-less folds run
// on the registers each block is loaded into and stored from; no second pass
// over the bytes; with `stream`, streaming stores where the destination is
// 64-byte aligned, fenced before the return). The destination may have any alignment. The chunks are [crc_begin + j*step,
// min(crc_begin + (j+1)*step, crc_end)) for j = 0.. (offsets into the copy),
// their crcs go to crcs[j]; bytes outside [crc_begin, crc_end) are only
// copied. step 0: no checks.
//
// A file truncated under its mapping turns a load past its new end into
// SIGBUS. The copy runs under a per-thread guard: such a fault ends it and
// sets *faulted (the bytes copied before it are returned), instead of
// killing the process. The handler is installed with each new mapping and
// each mapped batch, unless it is the current one (install_sigbus_guard); a SIGBUS outside
// a guarded copy goes to the handler that was there before (Python's
// faulthandler, say), or to the default action.
uint64_t mapped_copy(uint8_t* dst, const uint8_t* src, uint64_t len, uint64_t crc_begin, uint64_t crc_end, uint64_t step,
                     uint32_t* crcs, bool stream, bool* faulted);

// Installs the SIGBUS handler of mapped_copy unless it is the current one
// (cheap: one sigaction query). Called before a new mapping is used and at
// each mapped batch's submission.
void install_sigbus_guard();

// The process's copy threads: started on first use, grown to what a call
// asks for (at most kMaxWorkers), kept for later calls (a thread start costs
// tens of microseconds, a KV chunk copy about as much). Calls from several
// threads share the workers. A forked child gets a pool of its own.
class CopyPool {
 public:
  static constexpr size_t kMaxWorkers = 64;
  static CopyPool& shared();
  // Runs fn(i) for every i in [0, n): i = 0 on the calling thread, the rest on
  // the workers (on the calling thread when no worker thread can be started);
  // returns when all have returned. fn must not throw.
  void run(size_t n, const std::function<void(size_t)>& fn);

 private:
  CopyPool();
  unsigned grow(size_t want);  // starts workers up to want; returns how many there are
  void worker();
  pid_t owner_pid_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  size_t workers_ = 0;  // detached: the pool is never destroyed, its threads end with the process
};

}  // namespace sc
