// storecomp native I/O engine: batched reads and writes between files and
// memory addresses, completed off the calling thread (small page-cache
// hits in AUTO mode complete on it, at submission).
//
// A Batch holds requests {file, op, offset, length, address}. The engine
// splits each request into pieces of at most `split_bytes`, and a backend
// (io_uring when permitted, a pread/pwrite thread pool always) completes the
// pieces. O_DIRECT pieces whose offset, length or address are not aligned go
// through an aligned bounce area, so EINVAL never reaches a caller. What is
// aligned is what the kernel says for the file (statx STATX_DIOALIGN, Linux
// 6.1+: on NVMe any 4-byte aligned address), else the configured `align`.
#pragma once

#include <atomic>
#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace sc {

enum Op : uint8_t { OP_READ = 0, OP_WRITE = 1 };

// How a piece reaches the file.
//   BUFFERED: through the page cache.
//   DIRECT:   O_DIRECT (aligned bounce for unaligned parts).
//   AUTO:     reads try the page cache without blocking (RWF_NOWAIT) and read
//             what is not cached with O_DIRECT; writes are buffered.
enum Mode : uint8_t { MODE_BUFFERED = 0, MODE_DIRECT = 1, MODE_AUTO = 2 };

// A flag on BUFFERED or AUTO reads of files open read-only: copy out of a
// mapping of the file the engine keeps (FileEntry::mapping) instead of a
// read system call, on the engine's threads (a small batch on the caller's),
// with the crc32c of each chunk computed in the same pass (mapped_copy). For
// files the caller knows to be in the page cache: a page that is not faults
// in from the device, as a buffered read would read it. Where the file
// cannot be mapped, the read runs in the mode the flag is on.
constexpr uint8_t MODE_MAPPED = 4;
// A flag on MODE_MAPPED reads: the checked copy writes the destination with
// streaming stores (where it is 64-byte aligned), for destinations nobody
// reads from the cache soon: a loader's batch slots, which rotate through
// more memory than the cache holds (a third less memory traffic, measured
// 182-192k -> 224-231k hot 64 KiB samples/s). A reused small destination
// (a cache hit read into the same buffer again) is faster without it.
constexpr uint8_t MODE_STREAM = 8;
// A flag on BUFFERED or AUTO reads of read-only files that will be read
// again out of the engine's mapping (a loader's cold epoch over a data set
// that fits the page cache, before its mapped epochs): when a batch
// finishes, what it read is mapped into the file's kept mapping
// (MADV_POPULATE_READ) on a background thread at SCHED_IDLE, which runs on
// the CPU the cold epoch leaves idle while it waits for the device. The
// first mapped epoch then copies at once instead of taking a page fault per
// 4 KiB (measured: ~5 us of a 64 KiB sample's 13 us). Best effort: what the
// queue cannot hold, or a kernel without MADV_POPULATE_READ, is skipped.
constexpr uint8_t MODE_POPULATE = 16;

// Page-cache copies (AUTO mode) smaller than this cost less than a hand-off
// to another thread: batches up to it probe on the submitting thread, and
// reads from it up probe on the thread pool, which spreads copies over cores.
constexpr uint64_t kNowaitHandoffBytes = 256 << 10;

// A read-only MAP_SHARED mapping of a whole file, unmapped with its last holder.
struct FileMapping {
  const uint8_t* addr = nullptr;
  uint64_t len = 0;  // the file's size when mapped
  FileMapping() = default;
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;
  ~FileMapping();
};

struct FileEntry {
  std::string path;
  bool writable = false;
  int fd_buffered = -1;
  std::atomic<int> fd_direct{-1};
  std::atomic<bool> direct_unsupported{false};
  std::mutex open_mu;
  // O_DIRECT alignment the kernel reports for this file (statx
  // STATX_DIOALIGN) in bytes: of memory addresses, and of file offsets and
  // lengths; 0 when it does not say. Set by direct_fd() before it publishes
  // the descriptor.
  uint32_t dio_mem_align = 0;
  uint32_t dio_offset_align = 0;
  ~FileEntry();
  // O_DIRECT descriptor, opened on first use; -1 when the file system refuses
  // O_DIRECT (the caller then falls back to the buffered descriptor).
  int direct_fd();
  // Whether an O_DIRECT transfer of `len` bytes at file `offset` and memory
  // `addr` can go to the kernel as it is: aligned as the kernel reports for
  // this file, else to `align`. Only after direct_fd() returned a descriptor.
  bool direct_ok(uint64_t offset, uint64_t len, uintptr_t addr, uint64_t align) const;
  // The mapping of this (read-only) file for a read that ends at byte `end`:
  // the kept one, or a new one of the whole file when the kept one is shorter
  // and the file has grown (fstat). Pieces hold it while they copy, so a
  // remap or a close never unmaps under a copy. nullptr when the file cannot
  // be mapped (writable, or mmap refused it: a later call does not retry).
  std::shared_ptr<const FileMapping> mapping(uint64_t end);
  // Drops the kept mapping (copies in flight keep theirs until they finish):
  // its pages are no longer mapped in this process, so the page cache may
  // drop them (posix_fadvise DONTNEED skips mapped pages). The next mapped
  // read maps the file again.
  void release_mapping();

  // The granularity, in bytes, of the file offsets and lengths of the
  // O_DIRECT reads that bounce an unaligned one: `align`, or the kernel's
  // (statx) when that is coarser (a 4 KiB-sector device under align=512).
  uint64_t dio_align(uint64_t align) const { return align > dio_offset_align ? align : dio_offset_align; }
  // The alignment, in bytes, of the memory such a bounce reads into:
  // `align`, or the kernel's (statx dio_mem_align) when that is coarser.
  uint64_t mem_align(uint64_t align) const { return align > dio_mem_align ? align : dio_mem_align; }

 private:
  std::mutex map_mu_;
  std::shared_ptr<const FileMapping> map_;
  bool map_unsupported_ = false;
};

// Open files by id. A batch holds its files, so closing an id while I/O is
// in flight only closes the descriptors once that I/O has finished. Caching
// descriptors by path is the Python wrapper's job (storecomp.io.engine).
class FileTable {
 public:
  // Opens the file; throws std::system_error whose message is the path.
  uint32_t open(const std::string& path, bool writable, bool create);
  std::shared_ptr<FileEntry> get(uint32_t id);  // nullptr when not open
  void close(uint32_t id);
  size_t size();

 private:
  std::mutex mu_;
  uint32_t next_id_ = 1;
  std::unordered_map<uint32_t, std::shared_ptr<FileEntry>> by_id_;
};

struct Batch;
struct AeadRequest;  // aead.hpp

struct Piece {
  Batch* batch = nullptr;
  uint32_t req = 0;
  uint64_t rel = 0;    // offset of this piece inside its request
  uint64_t len = 0;    // bytes in this piece
  uint64_t done = 0;   // bytes completed so far (io_uring resubmits the rest)
  uint8_t mode = MODE_BUFFERED;
  uint8_t issued = 0;  // io_uring: what the last submission was (Issued)
  bool nowait_tried = false;
  bool nowait_probe = false;  // thread pool: only try the page cache, hand a miss back
  bool mapped = false;        // copy out of the file's mapping (MODE_MAPPED), then done
  bool stream = false;        // MODE_STREAM: the mapped copy's stores bypass the cache
  bool crc_done = false;      // the checks of the chunks inside this piece were computed as it was copied
  bool copy_out = false;      // thread pool: copy a landed bounce read out of the ring's arena
  // io_uring bounce (an unaligned O_DIRECT read through aligned arena pages):
  // the first arena unit, how many, and where the wanted bytes start in them.
  uint32_t bounce_first = 0;
  uint32_t bounce_units = 0;
  uint32_t bounce_skip = 0;
  uint64_t done_copy = 0;  // io_uring bounce: bytes the pool copies out of the arena (copy_out)
  uint32_t ring_slot = 0;  // io_uring: its place in the ring's list of pieces in flight
};

enum Issued : uint8_t { ISSUED_BUFFERED = 0, ISSUED_DIRECT = 1, ISSUED_NOWAIT = 2, ISSUED_BOUNCE = 3 };

struct Request {
  std::shared_ptr<FileEntry> file;
  uint8_t op = OP_READ;
  uint64_t offset = 0;
  uint64_t length = 0;
  uintptr_t addr = 0;
  std::atomic<uint64_t> valid{0};  // bytes valid from the start (min short end)
  std::atomic<int> err{0};
  std::atomic<uint64_t> err_offset{0};
  // Checks: when crc_step > 0, crc_out[k] receives the crc32c of chunk k
  // (crc_step bytes; the last may be shorter) of what was read. A chunk that
  // lies inside one piece is checked by the thread that read that piece, as
  // it lands (still warm in that core's cache, and spread over the threads);
  // a chunk that spans pieces, by the thread that completes the last piece.
  uint64_t crc_step = 0;
  uint32_t* crc_out = nullptr;
  uint64_t piece_bytes = 0;  // the split size of this request's pieces (set by submit)
  std::atomic<uint32_t> pieces_left{0};
  // Decryption instead of checks (aead.hpp): sealed segments opened in place as they land.
  AeadRequest* aead = nullptr;
};

class Populator;

struct Batch {
  explicit Batch(size_t n) : reqs(n) {}
  std::vector<Request> reqs;
  std::vector<Piece> pieces;
  std::vector<uint32_t> crcs;  // Request::crc_out points in here
  std::atomic<size_t> left{0};
  std::shared_ptr<Batch> self;  // keeps the batch alive while pieces are in flight
  std::shared_ptr<void> aead_state;  // what Request::aead points into (aead.hpp)
  std::shared_ptr<Populator> populate;  // MODE_POPULATE: gets what was read when the batch finishes
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;

  void complete(Piece& p, uint64_t got, int err);
  void piece_done();  // the last step of complete(): may finish (and release) the batch
  void check_piece(Request& r, const Piece& p, uint64_t got, int err);
  // Waits up to timeout seconds (negative: forever); true when finished.
  bool wait(double timeout);
  bool is_finished();
};

struct Stats {
  std::atomic<uint64_t> requests{0}, pieces{0}, bytes_read{0}, bytes_written{0},
      errors{0}, bounce_pieces{0}, direct_fallbacks{0}, nowait_hits{0},
      nowait_misses{0}, fixed_buffer_pieces{0}, cancelled{0}, bounce_handoffs{0},
      mapped_pieces{0}, mapped_faults{0}, populated_bytes{0}, populate_skipped{0};
  std::atomic<uint64_t> bounce_arena_bytes{0};  // not a counter: the io_uring bounce arena's size now
  std::atomic<uint64_t> ring_lost{0};  // not a counter: 1 once the ring's descriptor was closed under the engine
};

struct Config {
  std::string backend = "auto";  // auto | io_uring | threads
  unsigned queue_depth = 64;
  unsigned threads = 4;
  uint64_t split_bytes = 1 << 20;
  uint64_t align = 4096;
  uint64_t bounce_bytes = 1 << 20;
};

// Executes one piece synchronously (thread pool and bounce pieces).
// Returns bytes transferred; sets *err to an errno on failure.
uint64_t run_piece_sync(Piece& p, uint64_t align, uint64_t bounce_bytes,
                        uint8_t* bounce, Stats& stats, int* err);

// Tries the page cache without blocking (preadv2 RWF_NOWAIT) for the rest of
// an AUTO read piece and advances p.done by what it got. True when the piece
// is finished (all read, end of file, or an error in *err); false when the
// rest must come from the device: with O_DIRECT, or buffered where the file
// system has no RWF_NOWAIT (p.mode is then MODE_BUFFERED).
bool nowait_read(Piece& p, Stats& stats, int* err);

// Copies a MODE_MAPPED piece out of its file's mapping (checks as it goes,
// see Request::crc_step) and advances p.done. False when the file cannot be
// mapped: the piece is untouched and must run in its mode. True otherwise;
// *err is ESTALE when the file shrank under the copy (SIGBUS, caught).
bool mapped_read(Piece& p, Stats& stats, int* err);

// Whether a DIRECT piece can go to the kernel as it is (no bounce needed).
bool direct_aligned(uint64_t offset, uint64_t len, uintptr_t addr, uint64_t align);

class ThreadPool {
 public:
  ThreadPool(unsigned threads, uint64_t align, uint64_t bounce_bytes, Stats& stats);
  ~ThreadPool();
  // `cpu_bound`: pieces that only copy (a data set's mapped batches) wake
  // workers only while fewer are awake than the process has CPUs.
  void submit(Piece* const* pieces, size_t n, bool cpu_bound = false);
  // Where pieces submitted with nowait_probe go when the page cache misses.
  // Set once, before such pieces are submitted.
  void set_miss_sink(std::function<void(Piece*)> sink) { miss_sink_ = std::move(sink); }
  // What finishes pieces submitted with copy_out (the io_uring backend's
  // bounce copies); it also runs for such pieces submitted after shutdown,
  // on the submitting thread, so that none is left holding arena memory.
  // Set once, before such pieces are submitted.
  void set_copy_sink(std::function<void(Piece*)> sink) { copy_sink_ = std::move(sink); }
  // Runs the workers under SCHED_BATCH from their next task on: the same
  // share of CPU, but no wake-up preemption of other threads. For a pool
  // that only copies (the io_uring backend's): on a busy machine its copies
  // then never hold off the ring's reaper, which keeps the device busy.
  // Best effort (ignored where the policy is refused).
  void set_batch_scheduling() { batch_scheduling_ = true; }
  void shutdown();

 private:
  void worker();
  // Completes a piece that will not run (cancelled), or finishes its copy.
  void drop(Piece* p);
  std::function<void(Piece*)> miss_sink_;
  std::function<void(Piece*)> copy_sink_;
  std::atomic<bool> batch_scheduling_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Piece*> queue_;
  std::vector<std::thread> workers_;
  size_t awake_ = 0;  // workers not waiting for work (under mu_)
  size_t cpus_ = 1;   // CPUs this process may run on (sched_getaffinity at creation)
  bool stopping_ = false;
  uint64_t align_, bounce_bytes_;
  Stats& stats_;
};

// MODE_POPULATE's background thread: maps ranges just read into their
// files' kept mappings (MADV_POPULATE_READ), one range at a time, at
// SCHED_IDLE. Started by the first batch that needs it. The mappings are made
// as batches finish (once per file), so that one released later is not
// made again by a range still queued.
class Populator {
 public:
  explicit Populator(Stats& stats) : stats_(stats) {}
  ~Populator() { shutdown(); }
  // Queues the reads of `b` that succeeded (called as it finishes).
  void push(const Batch& b);
  void shutdown();

 private:
  struct Range {
    std::weak_ptr<const FileMapping> map;  // a mapping released meanwhile (FileEntry::release_mapping) is skipped
    uint64_t offset, length;
  };
  void run();
  static constexpr size_t kMaxQueued = 1 << 16;  // ranges; more are skipped (4 GiB of 64 KiB samples)
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Range> queue_;
  std::thread thread_;
  bool stopping_ = false;
  bool unsupported_ = false;  // madvise refused MADV_POPULATE_READ (Linux < 5.14): nothing more is queued
  Stats& stats_;
};

class UringBackend;  // defined in uring.cpp when liburing is present

struct UringProbe {
  bool compiled = false;
  bool permitted = false;
  std::string reason;
};
UringProbe probe_uring();

class Engine {
 public:
  explicit Engine(const Config& cfg);  // throws std::invalid_argument
  ~Engine();
  const std::string& backend() const { return backend_; }
  const std::string& backend_reason() const { return backend_reason_; }
  FileTable& files() { return files_; }
  // Splits and submits; the returned batch completes asynchronously (or is
  // already complete: a small AUTO-mode batch served from the page cache).
  std::shared_ptr<Batch> submit(std::shared_ptr<Batch> batch, uint8_t mode);
  // Registers [addr, addr+len) as io_uring fixed buffer; false when not used.
  bool register_buffer(uintptr_t addr, uint64_t len);
  void unregister_buffer(uintptr_t addr);
  void shutdown();
  Stats& stats() { return stats_; }
  const Config& config() const { return cfg_; }

 private:
  Config cfg_;
  std::string backend_, backend_reason_;
  Stats stats_;
  FileTable files_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<UringBackend> uring_;
  std::shared_ptr<Populator> populator_;  // MODE_POPULATE
  std::atomic<bool> stopped_{false};
  pid_t owner_pid_;  // the process whose threads serve this engine (see shutdown)
};

}  // namespace sc
