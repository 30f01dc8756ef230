#include "uring.hpp"

#include "bounce_arena.hpp"
#include "copy.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#ifdef STORECOMP_HAVE_LIBURING
#include <fcntl.h>
#include <linux/futex.h>
#include <liburing.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#endif

namespace sc {

#ifndef STORECOMP_HAVE_LIBURING

UringProbe probe_uring() { return {false, false, "built without liburing"}; }

std::unique_ptr<UringBackend> make_uring(unsigned, ThreadPool&, Stats&, uint64_t, uint64_t, std::string* reason) {
  *reason = "built without liburing";
  return nullptr;
}

#else

UringProbe probe_uring() {
  UringProbe p;
  p.compiled = true;
  struct io_uring ring;
  int r = io_uring_queue_init(4, &ring, 0);
  if (r < 0) {
    p.reason = std::string("io_uring_setup: ") + std::strerror(-r);
    return p;
  }
  io_uring_queue_exit(&ring);
  p.permitted = true;
  p.reason = "io_uring permitted";
  return p;
}

#ifndef FUTEX2_SIZE_U32
#define FUTEX2_SIZE_U32 0x02   // linux/futex.h, Linux 6.7
#endif
#ifndef FUTEX2_PRIVATE
#define FUTEX2_PRIVATE 128     // FUTEX_PRIVATE_FLAG
#endif
constexpr int kOpFutexWait = 51;  // IORING_OP_FUTEX_WAIT, Linux 6.7; missing from older headers
constexpr long kIdleWaitNs = 100'000'000;  // an idle reaper's longest wait on an eventfd wake-up

#ifndef IORING_REGISTER_USE_REGISTERED_RING
#define IORING_REGISTER_USE_REGISTERED_RING (1U << 31)  // Linux 6.3; missing from older headers
#endif

namespace {

// AUTO reads of at least kNowaitHandoffBytes try the page cache in the
// thread pool rather than in the ring. A cached read is a copy done by
// whichever thread issues it; issued from the ring, all copies would fall to
// the one submitting thread, while the pool spreads them over every core.

// Fixed buffer slots (a sparse table where the kernel has one, 5.19+): the
// staging pool the caller registers, and the bounce arena's chunks.
constexpr unsigned kFixedStaging = 0;
constexpr unsigned kFixedBounce = 1;  // the first chunk; chunk i is kFixedBounce + i
constexpr unsigned kMaxArenaChunks = 4;
constexpr uint64_t kArenaChunkBytes = 16ull << 20;  // unless two of the largest pieces need more
constexpr uint64_t kArenaMaxBytes = 64ull << 20;    // the most the chunks add up to (but at least one chunk)

// Bounce copies of at least this many bytes leave the reaper: the thread
// pool's workers copy them out of the arena (and run the piece's checks)
// while the reaper keeps the ring full. Smaller ones cost less to copy
// than to hand over, and are copied on the reaper.
constexpr uint64_t kBounceHandoffBytes = 32 << 10;

// One ring, one submitter. Callers append pieces to the pending queue under
// mu_ and wake the reaper through an eventfd (a multishot poll on it sits in
// the ring); only the reaper touches the submission queue. Each round it
// fills the ring from the pending queue (at most queue_depth pieces in
// flight), each O_DIRECT piece in its own io_uring_enter, then waits for at
// least one completion and handles all that have come, as fio does.
// Unaligned O_DIRECT reads bounce through the arena, in the ring, and the
// copies out of it of all but small pieces run on the thread pool (never
// serialised on the reaper); large AUTO reads go to the thread pool for
// their page-cache attempt (misses come back here).
class Uring final : public UringBackend {
 public:
  Uring(unsigned qd, ThreadPool& pool, Stats& stats, uint64_t align, uint64_t split_bytes)
      : qd_(qd), pool_(pool), stats_(stats), align_(align) {
    // Chunks of 16 MiB (or two of the largest pieces, with their aligned
    // heads and tails); as many as a full ring of the largest pieces and as
    // many again waiting for their copies need, within kArenaMaxBytes.
    uint64_t unit = std::max<uint64_t>(align, 4096);
    uint64_t piece = split_bytes + 2 * unit;
    arena_chunk_bytes_ = std::max(kArenaChunkBytes, (2 * piece + unit - 1) / unit * unit);
    uint64_t want = (2 * uint64_t{qd} * piece + arena_chunk_bytes_ - 1) / arena_chunk_bytes_;
    uint64_t most = std::max<uint64_t>(1, kArenaMaxBytes / arena_chunk_bytes_);
    arena_max_chunks_ = static_cast<unsigned>(std::clamp<uint64_t>(want, 1, std::min<uint64_t>(most, kMaxArenaChunks)));
  }

  // Creates the ring and starts the reaper; a negative errno, with *why
  // naming the step that failed, when the ring cannot serve.
  int init(std::string* why) {
    // The reaper is the ring's one submitter, and the one thread that waits
    // for its completions: SINGLE_ISSUER | DEFER_TASKRUN (6.1+, as fio sets
    // them) post completions only when the reaper asks for them, in batches,
    // instead of by task work that interrupts it for each one. The ring
    // starts disabled and the reaper enables it, so that it is the
    // submitter; from then on only the reaper may register buffers (it runs
    // the callers' requests, see RegCommand). Kernels without these flags:
    // COOP_TASKRUN (5.19+, completions posted when the reaper next enters the
    // kernel, not by an interrupt to it), else none.
    const unsigned tries[] = {
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED,
        IORING_SETUP_COOP_TASKRUN, 0};
    int r = -EINVAL;
    for (unsigned flags : tries) {
      r = io_uring_queue_init(qd_ + 1, &ring_, flags);  // +1: re-arming the wake poll
      if (r != -EINVAL) {
        disabled_ = r == 0 && (flags & IORING_SETUP_R_DISABLED);
        break;
      }
    }
    if (r < 0) {
      *why = std::string("io_uring_queue_init: ") + std::strerror(-r);
      return r;
    }
    // The reaper sleeps on a futex in the ring where the kernel has the
    // operation (6.7+): callers wake it without a descriptor, which code that
    // closes descriptors it does not own (os.closerange) could take away.
    // Else on an eventfd, polled in the ring.
    if (io_uring_probe* probe = io_uring_get_probe_ring(&ring_)) {
      futex_wake_ = io_uring_opcode_supported(probe, kOpFutexWait);
      io_uring_free_probe(probe);
    }
    if (!futex_wake_) efd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (!futex_wake_ && efd_ < 0) {
      int err = errno;
      io_uring_queue_exit(&ring_);
      *why = std::string("eventfd: ") + std::strerror(err);
      return -err;
    }
    sparse_ = io_uring_register_buffers_sparse(&ring_, kFixedBounce + kMaxArenaChunks) == 0;
    try {
      reaper_ = std::thread([this] { reap(); });
    } catch (const std::system_error& e) {
      r = -(e.code().value() ? e.code().value() : EAGAIN);
      *why = std::string("io_uring reaper thread: ") + std::strerror(-r);
      if (efd_ >= 0) ::close(efd_);
      io_uring_queue_exit(&ring_);
      return r;
    }
    // The reaper's first step is to enable the ring (it must be the one:
    // the enabling task becomes the only submitter). A ring that cannot be
    // enabled (a seccomp profile that refuses io_uring_register) would never
    // complete a read: report it, and the engine uses the thread pool.
    {
      std::unique_lock<std::mutex> g(mu_);
      start_cv_.wait(g, [this] { return started_; });
      r = start_err_;
    }
    if (r < 0) {
      reaper_.join();  // it returned without entering its loop
      if (efd_ >= 0) ::close(efd_);
      io_uring_queue_exit(&ring_);
      *why = std::string("io_uring ring could not be enabled (IORING_REGISTER_ENABLE_RINGS: ") + std::strerror(-r) + ")";
      return r;
    }
    inited_ = true;
    pool_.set_miss_sink([this](Piece* p) { submit(&p, 1); });
    pool_.set_copy_sink([this](Piece* p) { finish_copy(p); });
    pool_.set_batch_scheduling();  // with a ring, the pool copies (bounces, page-cache hits)
    return 0;
  }

  ~Uring() override {
    shutdown();
  }

  void submit(Piece* const* pieces, size_t n) override {
    std::vector<Piece*> cancelled;
    bool wake = false;
    {
      std::lock_guard<std::mutex> g(mu_);
      if (stopping_) {
        cancelled.assign(pieces, pieces + n);
      } else if (lost_) {
        pool_.submit(pieces, n);  // the ring is gone (see lose()): the pool reads from here on
      } else {
        pending_.insert(pending_.end(), pieces, pieces + n);
        wake = reaper_waiting_;
      }
    }
    if (wake) this->wake();
    cancel(cancelled);
  }

  bool register_buffer(uintptr_t addr, uint64_t len) override {
    std::unique_lock<std::mutex> g(mu_);
    reg_cv_.wait(g, [this] { return !reg_.pending; });  // one request at a time
    if (fixed_len_ || stopping_ || lost_) return false;
    reg_ = RegCommand{true, false, false, addr, len, false};
    run_on_reaper(g);
    if (!reg_.ok) return false;
    fixed_base_ = addr;
    fixed_len_ = len;
    return true;
  }

  void unregister_buffer(uintptr_t addr) override {
    std::unique_lock<std::mutex> g(mu_);
    reg_cv_.wait(g, [this] { return !reg_.pending; });
    // After shutdown the ring is gone (its fd may already belong to another
    // ring); only the registration of addr is undone.
    if (!fixed_len_ || stopping_ || lost_ || addr != fixed_base_) return;
    fixed_base_ = 0;  // no new fixed read from here on
    fixed_len_ = 0;
    reg_ = RegCommand{true, false, true, addr, 0, false};
    run_on_reaper(g);
  }

  void shutdown() override {
    if (!inited_) return;
    std::vector<Piece*> cancelled;
    {
      std::lock_guard<std::mutex> g(mu_);
      if (stopping_) return;
      stopping_ = true;
      cancelled.assign(pending_.begin(), pending_.end());
      pending_.clear();
    }
    cancel(cancelled);
    wake();
    reaper_.join();  // returns once nothing is in flight
    {
      // Copies out of the arena still running on the pool (which outlives
      // this call) finish before the arena goes.
      std::unique_lock<std::mutex> g(arena_mu_);
      copies_cv_.wait(g, [this] { return copies_pending_ == 0; });
    }
    // A descriptor the ring keeps (kernels before 6.3) may have been closed under the engine
    // and its number given to another file since: that number is not closed here.
    if (ring_.ring_fd >= 0 && !names_a_ring(ring_.ring_fd)) ring_.ring_fd = -1;
    io_uring_queue_exit(&ring_);  // drops the fixed buffer registration too
    if (arena_leaked_)
      (void)arena_.release();  // reads the lost ring may still land in it (see lose()): never unmapped
    arena_.reset();
    stats_.bounce_arena_bytes = 0;
    if (efd_ >= 0) ::close(efd_);
    inited_ = false;
    fixed_base_ = 0;
    fixed_len_ = 0;
  }

 private:
  // A caller's buffer (un)registration, run by the reaper (the ring's
  // submitter) at the top of its next round; reg_cv_ answers.
  struct RegCommand {
    bool pending = false;
    bool done = false;
    bool unregister = false;
    uintptr_t addr = 0;
    uint64_t len = 0;
    bool ok = false;
  };

  // Hands reg_ (just set, under g) to the reaper and waits for it. Callers
  // set it only before stopping_, and the reaper runs it before it exits.
  void run_on_reaper(std::unique_lock<std::mutex>& g) {
    bool w = reaper_waiting_;
    g.unlock();
    if (w) wake();
    g.lock();
    reg_cv_.wait(g, [this] { return reg_.done; });
    reg_.pending = false;
    reg_cv_.notify_all();
  }

  // On the reaper, under mu_.
  void run_registration_locked() {
    if (!reg_.pending || reg_.done) return;
    if (reg_.unregister) {
      if (sparse_) {
        struct iovec none = {nullptr, 0};  // an empty slot; reads still in flight keep the old pages pinned
        update_buffer(kFixedStaging, &none);
      } else {
        reg(IORING_UNREGISTER_BUFFERS, nullptr, 0);
      }
      reg_.ok = true;
    } else {
      struct iovec iov = {reinterpret_cast<void*>(reg_.addr), static_cast<size_t>(reg_.len)};
      int r = sparse_ ? update_buffer(kFixedStaging, &iov) : reg(IORING_REGISTER_BUFFERS, &iov, 1);
      reg_.ok = r >= 0;
    }
    reg_.done = true;
    reg_cv_.notify_all();
  }

  // The reaper's first steps: become the ring's submitter, then register
  // what only the submitter may. 0, or the negative errno of a ring that
  // could not be enabled.
  int start_reaper() {
    // io_uring_enable_rings() is missing from some liburing builds (2.3): the system call itself.
    if (disabled_ && ::syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) < 0)
      return -errno;
    // Buffered reads that miss the page cache block in io-wq workers, by
    // default at most 4 per CPU: on a small machine that caps a cold
    // buffered (page-cache tier) pass at a fraction of the ring's queue
    // depth. Allow one bounded worker per ring entry (advisory).
    unsigned workers[2] = {qd_, 0};
    (void)io_uring_register_iowq_max_workers(&ring_, workers);
    make_private();
    arm_wake();
    return 0;
  }

  // Closes the ring's own descriptor where the kernel lets the reaper reach
  // the ring without it: a registered ring (5.18+) for io_uring_enter, and
  // for io_uring_register too (6.3+). Code that closes descriptors it does
  // not own (os.closerange, a dup2 over them) then cannot touch the ring,
  // and the number it had is never closed again at shutdown (by then it may
  // name another file). Where only the enters can go through the index, the
  // descriptor stays for the registrations; a kernel without registered
  // rings keeps using it (a lost descriptor: see lose()).
  void make_private() {
    if (io_uring_register_ring_fd(&ring_) != 1) return;
    unsigned query[2] = {0, 0};  // reads the io-wq limits, changes nothing
    if (::syscall(__NR_io_uring_register, ring_.enter_ring_fd,
                  IORING_REGISTER_IOWQ_MAX_WORKERS | IORING_REGISTER_USE_REGISTERED_RING, query, 2) < 0)
      return;
    ::close(ring_.ring_fd);
    ring_.ring_fd = -1;  // io_uring_queue_exit's close(-1) is then a no-op
    fd_private_ = true;
  }

  // Whether descriptor fd is an io_uring instance (anon_inode:[io_uring]).
  static bool names_a_ring(int fd) { return names_anon(fd, "anon_inode:[io_uring]"); }

  // Whether descriptor fd is open and its /proc link reads `want` (true when there is no /proc to tell).
  static bool names_anon(int fd, const std::string& want) {
    if (fd < 0 || ::fcntl(fd, F_GETFD) < 0) return false;  // closed
    char link[64];
    std::string path = "/proc/self/fd/" + std::to_string(fd);
    ssize_t n = ::readlink(path.c_str(), link, sizeof link);
    if (n < 0) return true;
    return std::string(link, static_cast<size_t>(n)) == want;
  }

  // After an idle wait that nothing ended (the eventfd wake-up only): when
  // pieces wait, their wake-up was lost, as when efd_ was closed or dup2-ed
  // over under the engine. A new eventfd takes its place, with its poll in
  // the ring; the old number is left alone (it may name another file now).
  void check_wake() {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (pending_.empty() && !stopping_ && !(reg_.pending && !reg_.done)) return;
    }
    if (names_anon(efd_, "anon_inode:[eventfd]")) return;  // ours still: a wake-up is on its way
    int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) return;  // the next idle wait tries again
    efd_ = fd;
    arm_wake();
  }

  // io_uring_register on this ring: by its registered index once its
  // descriptor is closed (make_private), else by the descriptor. The
  // result, or a negative errno.
  int reg(unsigned op, const void* arg, unsigned nr) {
    int fd = fd_private_ ? ring_.enter_ring_fd : ring_.ring_fd;
    long r = ::syscall(__NR_io_uring_register, fd, op | (fd_private_ ? IORING_REGISTER_USE_REGISTERED_RING : 0u), arg, nr);
    return r < 0 ? -errno : static_cast<int>(r);
  }

  // Puts *iov in fixed buffer slot `slot` (an empty iovec empties it): 1 when done.
  int update_buffer(unsigned slot, const struct iovec* iov) {
    struct io_uring_rsrc_update2 up {};
    up.offset = slot;
    up.data = reinterpret_cast<uint64_t>(iov);
    up.nr = 1;
    return reg(IORING_REGISTER_BUFFERS_UPDATE, &up, sizeof up);
  }

  // What io_uring_enter answers when the ring's descriptor no longer names
  // this ring: closed (EBADF), reused for another file (EOPNOTSUPP), or for
  // another engine's ring (EEXIST: it has another submitter; EBADFD: not
  // enabled yet), or the ring is torn down (ENXIO).
  static bool ring_gone(int r) {
    return r == -EBADF || r == -EOPNOTSUPP || r == -EEXIST || r == -EBADFD || r == -ENXIO;
  }

  // The ring's descriptor was closed under the engine (only possible where
  // it could not be made private): nothing can be submitted to the ring or
  // reaped from it any more. Pieces in the ring fail with EBADFD (storecomp
  // names it: the engine's io_uring descriptor was closed under it); the
  // kernel may still finish their reads, so the bounce arena is never
  // unmapped. Pieces not yet in the ring, and every one submitted later, go
  // to the thread pool, which reads them as if the ring had never been.
  // Called on the reaper, which returns right after.
  void lose() {
    std::vector<Piece*> failed, to_pool;
    {
      std::lock_guard<std::mutex> g(mu_);
      lost_ = true;
      to_pool.assign(pending_.begin(), pending_.end());
      pending_.clear();
      failed.swap(live_);
      inflight_ = 0;
      if (reg_.pending && !reg_.done) {  // a caller waits for the reaper: it is leaving
        reg_.ok = false;
        reg_.done = true;
        reg_cv_.notify_all();
      }
    }
    stats_.ring_lost = 1;
    ring_.ring_fd = -1;  // the number may name another file by now: never closed at shutdown
    {
      std::lock_guard<std::mutex> a(arena_mu_);
      for (Piece* p : failed)
        if (p->issued == ISSUED_BOUNCE) arena_leaked_ = true;
    }
    if (!to_pool.empty()) pool_.submit(to_pool.data(), to_pool.size());
    for (Piece* p : failed) {
      stats_.errors++;
      p->batch->complete(*p, p->done, EBADFD);
    }
  }

  // The pieces whose SQEs are in the ring (reaper only): each knows its place (Piece::ring_slot).
  void track(Piece* p) {
    p->ring_slot = static_cast<uint32_t>(live_.size());
    live_.push_back(p);
  }
  void untrack(Piece* p) {
    Piece* last = live_.back();
    live_[p->ring_slot] = last;
    last->ring_slot = p->ring_slot;
    live_.pop_back();
  }

  void cancel(const std::vector<Piece*>& pieces) {
    for (Piece* p : pieces) {
      stats_.cancelled++;
      p->batch->complete(*p, p->done, ECANCELED);
    }
  }

  // An unaligned O_DIRECT read: it bounces through the arena.
  bool needs_bounce(Piece* p) {
    Request& r = p->batch->reqs[p->req];
    if (r.op != OP_READ || p->mode == MODE_BUFFERED || (p->mode == MODE_AUTO && !p->nowait_tried)) return false;
    uint64_t off = r.offset + p->rel + p->done;
    return r.file->direct_fd() >= 0 && !r.file->direct_ok(off, p->len - p->done, r.addr + p->rel + p->done, align_);
  }

  // Maps (and registers, where it can) one more arena chunk; false when
  // the arena may not grow or the memory cannot be had.
  bool grow_arena() {
    int i = arena_->grow();
    if (i < 0) return false;
    stats_.bounce_arena_bytes += arena_->chunk_bytes();
    struct iovec iov = {arena_->chunk_base(static_cast<unsigned>(i)), static_cast<size_t>(arena_->chunk_bytes())};
    arena_fixed_.push_back(sparse_ && update_buffer(kFixedBounce + static_cast<unsigned>(i), &iov) == 1);
    return true;
  }

  // Reserves arena units for a bouncing piece; false when there is no room
  // now (or no arena at all: then *to_pool is set).
  bool reserve_bounce(Piece* p, bool* to_pool) {
    if (p->batch->reqs[p->req].file->mem_align(align_) > arena_unit()) {
      *to_pool = true;  // the file needs memory aligned more than an arena unit is: the pool honours it
      return false;
    }
    std::lock_guard<std::mutex> g(arena_mu_);
    if (!arena_) {
      arena_ = std::make_unique<BounceArena>(arena_chunk_bytes_, arena_unit(), arena_max_chunks_);
      grow_arena();
    }
    if (arena_->chunks() == 0) {
      *to_pool = true;  // no memory for an arena: the pool's per-thread bounce areas
      return false;
    }
    Request& r = p->batch->reqs[p->req];
    uint64_t unit = r.file->dio_align(align_);
    uint64_t off = r.offset + p->rel + p->done;
    uint64_t skip = off % unit;
    uint64_t alen = (skip + p->len - p->done + unit - 1) / unit * unit;
    uint32_t units = arena_->units_for(alen);
    int64_t first = arena_->alloc(units);
    if (first < 0 && grow_arena()) first = arena_->alloc(units);
    if (first < 0) {
      arena_blocked_ = true;  // the next copy to finish wakes the reaper
      return false;
    }
    p->bounce_first = static_cast<uint32_t>(first);
    p->bounce_units = units;
    p->bounce_skip = static_cast<uint32_t>(skip);
    return true;
  }

  // The arena's unit, in bytes: each unit starts aligned to it (chunks are 2 MiB aligned).
  uint64_t arena_unit() const { return std::max<uint64_t>(align_, 4096); }

  void release_bounce(Piece* p) {
    std::lock_guard<std::mutex> g(arena_mu_);
    if (p->bounce_units) arena_->release(p->bounce_first, p->bounce_units);
    p->bounce_units = 0;
  }

  // Prepares an SQE for a piece with reserved arena units.
  void prep_bounce(io_uring_sqe* sqe, Piece* p) {
    Request& r = p->batch->reqs[p->req];
    uint64_t off = r.offset + p->rel + p->done;
    uint64_t aoff = off - p->bounce_skip;
    uint64_t unit = r.file->dio_align(align_);
    auto alen = static_cast<unsigned>((p->bounce_skip + p->len - p->done + unit - 1) / unit * unit);
    uint8_t* buf = arena_->at(p->bounce_first);
    unsigned chunk = arena_->chunk_of(p->bounce_first);
    int fd = r.file->direct_fd();
    if (arena_fixed_[chunk]) {
      io_uring_prep_read_fixed(sqe, fd, buf, alen, aoff, static_cast<int>(kFixedBounce + chunk));
      stats_.fixed_buffer_pieces++;
    } else {
      io_uring_prep_read(sqe, fd, buf, alen, aoff);
    }
    p->issued = ISSUED_BOUNCE;
    stats_.bounce_pieces++;
    io_uring_sqe_set_data(sqe, p);
  }

  // Prepares an SQE for the piece; false when the piece must go to the pool.
  bool prep(io_uring_sqe* sqe, Piece* p) {
    Request& r = p->batch->reqs[p->req];
    FileEntry& f = *r.file;
    uint64_t off = r.offset + p->rel + p->done;
    auto len = static_cast<unsigned>(p->len - p->done);
    uintptr_t addr = r.addr + p->rel + p->done;
    int fd = f.fd_buffered;
    p->issued = ISSUED_BUFFERED;
    if (r.op == OP_WRITE) {
      if (p->mode == MODE_DIRECT) {  // AUTO writes are buffered
        int dfd = f.direct_fd();
        if (dfd >= 0 && !f.direct_ok(off, len, addr, align_)) dfd = -1;
        if (dfd < 0) {
          stats_.direct_fallbacks++;  // unaligned O_DIRECT write goes buffered
        } else {
          fd = dfd;
          p->issued = ISSUED_DIRECT;
        }
      }
    } else if (p->mode == MODE_AUTO && !p->nowait_tried) {
      p->issued = ISSUED_NOWAIT;
    } else if (p->mode != MODE_BUFFERED) {
      int dfd = f.direct_fd();
      if (dfd < 0) {
        stats_.direct_fallbacks++;
      } else if (!f.direct_ok(off, len, addr, align_)) {
        return false;  // unaligned O_DIRECT read without an arena: bounce in the pool
      } else {
        fd = dfd;
        p->issued = ISSUED_DIRECT;
      }
    }
    void* buf = reinterpret_cast<void*>(addr);
    bool fixed = p->issued == ISSUED_DIRECT && seen_fixed_len_ && addr >= seen_fixed_base_ &&
                 addr + len <= seen_fixed_base_ + seen_fixed_len_;
    if (r.op == OP_READ) {
      if (fixed)
        io_uring_prep_read_fixed(sqe, fd, buf, len, off, kFixedStaging);
      else
        io_uring_prep_read(sqe, fd, buf, len, off);
      if (p->issued == ISSUED_NOWAIT) sqe->rw_flags = RWF_NOWAIT;
    } else {
      if (fixed)
        io_uring_prep_write_fixed(sqe, fd, buf, len, off, kFixedStaging);
      else
        io_uring_prep_write(sqe, fd, buf, len, off);
    }
    if (fixed) stats_.fixed_buffer_pieces++;
    io_uring_sqe_set_data(sqe, p);
    return true;
  }

  static bool probe_in_pool(const Piece* p) {
    return p->mode == MODE_AUTO && !p->nowait_tried && p->len - p->done >= kNowaitHandoffBytes &&
           p->batch->reqs[p->req].op == OP_READ;
  }

  // Takes the next pending piece the ring may start now, under mu_: with
  // its arena units reserved (*bounce) when it is an unaligned O_DIRECT
  // read. nullptr when the ring is full, nothing is pending, or the arena
  // has no room (the piece keeps its place: completions and copies make
  // room, and the next finished copy wakes the reaper). Pieces for the pool
  // go to *to_pool on the way.
  Piece* take_locked(std::vector<Piece*>* to_pool, bool* bounce) {
    while (inflight_ < qd_ && !pending_.empty()) {
      Piece* p = pending_.front();
      if (probe_in_pool(p)) {
        pending_.pop_front();
        p->nowait_probe = true;
        to_pool->push_back(p);
        continue;
      }
      *bounce = needs_bounce(p);
      if (*bounce) {
        bool no_arena = false;
        if (!reserve_bounce(p, &no_arena)) {
          if (!no_arena) return nullptr;
          pending_.pop_front();
          to_pool->push_back(p);
          continue;
        }
      }
      pending_.pop_front();
      inflight_++;
      return p;
    }
    return nullptr;
  }

  // Prepares the SQE of a piece taken from the pending queue and submits it
  // on its own (see fill()); false (the piece back at the head of the
  // queue) when the submission queue has no entry free.
  bool start(Piece* p, bool bounce, std::vector<Piece*>* to_pool) {
    // Not null while submissions succeed: the ring has qd_ + 1 entries, for at most qd_ pieces and the
    // wake-up poll. Entries that a failed io_uring_enter left go with the next one.
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {
      if (bounce) release_bounce(p);
      std::lock_guard<std::mutex> g(mu_);
      pending_.push_front(p);
      inflight_--;
      return false;
    }
    if (bounce) {
      prep_bounce(sqe, p);
      track(p);
    } else if (!prep(sqe, p)) {
      io_uring_prep_nop(sqe);  // the SQE is taken; make it a no-op (its completion counts as the piece's)
      io_uring_sqe_set_data(sqe, nullptr);
      to_pool->push_back(p);
    } else {
      track(p);
    }
    // Reads and writes of the device go at once; page-cache ones (buffered, RWF_NOWAIT), which the
    // kernel serves inline, go together with the round's wait. An error leaves the SQE in the ring:
    // the next enter submits it.
    if (p->issued == ISSUED_DIRECT || p->issued == ISSUED_BOUNCE) io_uring_submit(&ring_);
    return true;
  }

  // Fills the ring from the pending queue, one O_DIRECT piece per
  // io_uring_enter, as fio submits by default (iodepth_batch_submit=1). On
  // a virtio disk a burst of reads in one enter reaches the host as one
  // batch, which it serves one by one: reads submitted ten at a time waited
  // ~420 us in the device against ~290 us submitted one at a time, at the
  // same queue depth. Returns with mu_'s last section having set
  // reaper_waiting_ (or *exit): a piece queued after that wakes the reaper.
  // (When the submission queue is full, it returns with pieces in flight,
  // whose completions end the wait.)
  void fill(std::vector<Piece*>* to_pool, bool* exit, bool* idle) {
    for (;;) {
      Piece* p;
      bool bounce = false;
      {
        std::lock_guard<std::mutex> g(mu_);
        run_registration_locked();
        seen_fixed_base_ = fixed_base_;  // prep() reads them outside the lock
        seen_fixed_len_ = fixed_len_;
        p = take_locked(to_pool, &bounce);
        if (!p) {
          *exit = stopping_ && inflight_ == 0;
          *idle = inflight_ == 0;
          reaper_waiting_ = !*exit;
          return;
        }
      }
      if (!start(p, bounce, to_pool)) return;
    }
  }

  // A tag no piece can have: the completion of the wake-up poll.
  static void* wake_tag() { return reinterpret_cast<void*>(uintptr_t{1}); }

  // Puts the wake-up wait in the ring (submitted with the next round).
  // futex_wake_: a wait for wake_word_ to leave 0 (one-shot: re-armed after
  // each wake-up; a wake that comes before the wait is in the kernel makes it
  // complete at once, as the word is 1 then). Else a poll on efd_:
  // multishot where the kernel has it (5.13+), else one-shot.
  void arm_wake() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {  // cannot happen: the ring has qd_ + 1 entries and every round submits them all
      rearm_ = true;
      return;
    }
    rearm_ = false;
    if (futex_wake_) {
      wake_word_.store(0, std::memory_order_seq_cst);  // before this round takes the pending pieces
      io_uring_prep_rw(kOpFutexWait, sqe, FUTEX2_SIZE_U32 | FUTEX2_PRIVATE, &wake_word_, 0, 0);
      sqe->addr3 = FUTEX_BITSET_MATCH_ANY;
    } else if (multishot_) {
      io_uring_prep_poll_multishot(sqe, efd_, POLLIN);
    } else {
      io_uring_prep_poll_add(sqe, efd_, POLLIN);
    }
    io_uring_sqe_set_data(sqe, wake_tag());
  }

  void wake() {
    if (futex_wake_) {
      wake_word_.store(1, std::memory_order_seq_cst);
      ::syscall(SYS_futex, &wake_word_, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
      return;
    }
    uint64_t one = 1;
    ssize_t n;
    do {
      n = ::write(efd_, &one, sizeof one);
    } while (n < 0 && errno == EINTR);  // EAGAIN: the counter is full, a wake-up is pending anyway
  }

  // What one reaper round decided for the completions it saw.
  struct Round {
    std::vector<Piece*> again;                   // resubmit
    std::vector<std::pair<Piece*, int>> done;    // complete with this error (0: none)
    std::vector<Piece*> copies;                  // bounce copies for the pool
    std::vector<std::pair<uint32_t, uint32_t>> freed;  // arena units (first, count) to release
    void clear() {
      again.clear();
      done.clear();
      copies.clear();
      freed.clear();
    }
  };

  // Decides what a completion means for its piece: done, resubmit, or error.
  void handle(Piece* p, int res, Round* rd) {
    Request& r = p->batch->reqs[p->req];
    if (p->issued == ISSUED_BOUNCE) {
      handle_bounce(p, r, res, rd);
      return;
    }
    if (res < 0) {
      if (res == -EAGAIN && p->issued == ISSUED_NOWAIT) {
        stats_.nowait_misses++;
        p->nowait_tried = true;
        rd->again.push_back(p);
      } else if (res == -EOPNOTSUPP && p->issued == ISSUED_NOWAIT) {
        p->nowait_tried = true;  // file system without RWF_NOWAIT
        p->mode = MODE_BUFFERED;
        rd->again.push_back(p);
      } else if (res == -EINTR || res == -EAGAIN) {
        rd->again.push_back(p);
      } else {
        stats_.errors++;
        rd->done.emplace_back(p, -res);
      }
      return;
    }
    auto n = static_cast<uint64_t>(res);
    if (r.op == OP_READ)
      stats_.bytes_read += n;
    else
      stats_.bytes_written += n;
    uint64_t want = p->len - p->done;
    p->done += n;
    if (n == want) {
      if (p->issued == ISSUED_NOWAIT) stats_.nowait_hits++;
      rd->done.emplace_back(p, 0);
    } else if (n == 0 && r.op == OP_READ) {
      rd->done.emplace_back(p, 0);  // end of file
    } else if (n == 0) {
      rd->done.emplace_back(p, EIO);
    } else if (p->issued == ISSUED_DIRECT && r.op == OP_READ) {
      rd->done.emplace_back(p, 0);  // a short O_DIRECT read ends at end of file
    } else {
      if (p->issued == ISSUED_NOWAIT) {
        stats_.nowait_misses++;  // partly cached: the rest with O_DIRECT
        p->nowait_tried = true;
      }
      rd->again.push_back(p);
    }
  }

  // A bounced read completed: the wanted bytes go to the destination (copied
  // here when small, else by the pool) and the arena units are freed after
  // the copy. A short aligned read means end of file.
  void handle_bounce(Piece* p, Request& r, int res, Round* rd) {
    if (res < 0) {
      rd->freed.emplace_back(p->bounce_first, p->bounce_units);
      p->bounce_units = 0;
      if (res == -EINTR || res == -EAGAIN) {
        rd->again.push_back(p);
      } else {
        stats_.errors++;
        rd->done.emplace_back(p, -res);
      }
      return;
    }
    uint64_t want = p->len - p->done;
    auto got = static_cast<uint64_t>(res);
    uint64_t n = got > p->bounce_skip ? std::min<uint64_t>(got - p->bounce_skip, want) : 0;
    if (n >= kBounceHandoffBytes) {
      p->copy_out = true;  // the units stay reserved until the pool has copied
      p->done_copy = n;
      rd->copies.push_back(p);
      return;
    }
    std::memcpy(reinterpret_cast<void*>(r.addr + p->rel + p->done), bounce_src(p), n);
    rd->freed.emplace_back(p->bounce_first, p->bounce_units);
    p->bounce_units = 0;
    stats_.bytes_read += n;
    p->done += n;
    rd->done.emplace_back(p, 0);
  }

  const uint8_t* bounce_src(const Piece* p) const {
    return arena_->at(p->bounce_first) + p->bounce_skip;
  }

  // On a pool thread: copy a bounced piece out of the arena, free its units
  // (waking the reaper when pieces wait for arena room) and complete it.
  void finish_copy(Piece* p) {
    Request& r = p->batch->reqs[p->req];
    uint64_t n = p->done_copy;
    stream_memcpy(reinterpret_cast<void*>(r.addr + p->rel + p->done), bounce_src(p), n);
    p->copy_out = false;
    p->done += n;
    stats_.bytes_read += n;
    stats_.bounce_handoffs++;
    {
      std::lock_guard<std::mutex> g(arena_mu_);  // not mu_: the reaper holds that while it fills the ring
      arena_->release(p->bounce_first, p->bounce_units);
      p->bounce_units = 0;
      // Pieces wait for the room just freed: wake the reaper before this copy stops counting as
      // pending (shutdown closes the eventfd once none is; the write never blocks).
      if (arena_blocked_) wake();
      arena_blocked_ = false;
      if (--copies_pending_ == 0) copies_cv_.notify_all();
    }
    p->batch->complete(*p, p->done, 0);  // may free the piece
  }

  void reap() {
    std::vector<Piece*> to_pool, cancelled;
    Round rd;
    int started = start_reaper();
    {
      std::lock_guard<std::mutex> g(mu_);
      started_ = true;
      start_err_ = started;
    }
    start_cv_.notify_all();
    if (started < 0) return;  // init() reports it
    for (;;) {
      bool exit = false;
      if (rearm_) arm_wake();
      bool idle = false;
      fill(&to_pool, &exit, &idle);
      if (!to_pool.empty()) pool_.submit(to_pool.data(), to_pool.size());
      to_pool.clear();
      if (exit) return;
      int r;
      if (idle && !futex_wake_ && (ring_.features & IORING_FEAT_EXT_ARG)) {
        // Nothing in flight: only a wake-up ends the wait. An eventfd can be closed under the
        // engine (os.closerange), so the wait is bounded and a lost wake-up found (check_wake).
        struct __kernel_timespec ts = {0, kIdleWaitNs};
        io_uring_cqe* first = nullptr;
        r = io_uring_submit_and_wait_timeout(&ring_, &first, 1, &ts, nullptr);
        if (r == -ETIME) {
          r = 0;
          check_wake();
        }
      } else {
        r = io_uring_submit_and_wait(&ring_, 1);
      }
      {
        std::lock_guard<std::mutex> g(mu_);
        reaper_waiting_ = false;
      }
      bool gone = ring_gone(r);  // completions already posted are handled first
      if (r < 0 && !gone && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
        std::this_thread::yield();  // cannot happen with a valid ring; avoid spinning hot
      }
      unsigned head, count = 0, pieces = 0;
      io_uring_cqe* cqe;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        count++;
        void* data = io_uring_cqe_get_data(cqe);
        if (data == wake_tag()) {
          if (futex_wake_) {
            rearm_ = true;  // woken, or the word was 1 already (-EAGAIN)
            continue;
          }
          uint64_t v;
          while (::read(efd_, &v, sizeof v) > 0) {
          }
          if (cqe->res < 0 && multishot_) multishot_ = false;  // a kernel without multishot poll
          if (!(cqe->flags & IORING_CQE_F_MORE)) rearm_ = true;
          continue;
        }
        pieces++;  // a piece, or the no-op left by one handed to the pool
        if (data) {
          untrack(static_cast<Piece*>(data));
          handle(static_cast<Piece*>(data), cqe->res, &rd);
        }
      }
      io_uring_cq_advance(&ring_, count);
      {
        std::lock_guard<std::mutex> g(mu_);
        inflight_ -= pieces;
        if (!rd.freed.empty() || !rd.copies.empty()) {
          std::lock_guard<std::mutex> a(arena_mu_);
          for (auto [first, n] : rd.freed) arena_->release(first, n);
          copies_pending_ += rd.copies.size();
        }
        if (stopping_) {
          cancelled.insert(cancelled.end(), rd.again.begin(), rd.again.end());
        } else {
          pending_.insert(pending_.begin(), rd.again.begin(), rd.again.end());
        }
      }
      // The copies go to the pool before anything completes here: the ring
      // is refilled at the top of the next round while they run.
      if (!rd.copies.empty()) pool_.submit(rd.copies.data(), rd.copies.size());
      for (auto& [p, err] : rd.done) p->batch->complete(*p, p->done, err);
      rd.clear();
      cancel(cancelled);
      cancelled.clear();
      if (gone) {
        lose();  // stats()["ring_lost"] says so
        return;
      }
    }
  }

  unsigned qd_;
  ThreadPool& pool_;
  Stats& stats_;
  uint64_t align_;
  struct io_uring ring_ {};
  bool inited_ = false;
  std::mutex mu_;
  std::deque<Piece*> pending_;
  unsigned inflight_ = 0;
  bool stopping_ = false;
  bool reaper_waiting_ = false;  // the reaper may be asleep: callers wake it (wake())
  bool futex_wake_ = false;      // set in init: the reaper waits on wake_word_, not efd_
  std::atomic<uint32_t> wake_word_{0};
  std::atomic<int> efd_{-1};  // replaced by the reaper when closed under it (check_wake)
  bool multishot_ = true;  // reaper thread only (and init, before it starts)
  bool rearm_ = false;     // reaper thread only
  uintptr_t fixed_base_ = 0;
  uint64_t fixed_len_ = 0;
  uintptr_t seen_fixed_base_ = 0;  // reaper only: fixed_base_ and fixed_len_ as of its last section under mu_
  uint64_t seen_fixed_len_ = 0;
  bool sparse_ = false;  // fixed buffers in a sparse table (kFixedStaging, kFixedBounce)
  bool fd_private_ = false;  // reaper only: the ring's descriptor is closed, reached by its registered index
  bool lost_ = false;        // under mu_: the ring's descriptor was closed under the engine (lose())
  bool arena_leaked_ = false;  // under arena_mu_: the lost ring may still read into the arena
  std::vector<Piece*> live_;   // reaper only: pieces whose SQEs are in the ring (track/untrack)
  bool disabled_ = false;  // created disabled: the reaper enables it (SINGLE_ISSUER)
  RegCommand reg_;
  std::condition_variable reg_cv_;
  bool started_ = false;  // the reaper has tried to enable the ring; start_err_ says how it went
  int start_err_ = 0;
  std::condition_variable start_cv_;
  std::unique_ptr<BounceArena> arena_;  // made on the first unaligned O_DIRECT read
  uint64_t arena_chunk_bytes_ = kArenaChunkBytes;
  unsigned arena_max_chunks_ = 1;
  std::vector<bool> arena_fixed_;  // per chunk: registered as fixed buffer kFixedBounce + i
  // The arena, the two fields below and copies_cv_: the pool's copies free
  // arena units without taking mu_. Lock order: mu_, then arena_mu_.
  std::mutex arena_mu_;
  bool arena_blocked_ = false;  // a piece found no arena room: the next finished copy wakes the reaper
  size_t copies_pending_ = 0;   // bounce copies handed to the pool, not yet finished
  std::condition_variable copies_cv_;  // shutdown waits on it for copies_pending_ == 0
  std::thread reaper_;
};

}  // namespace

std::unique_ptr<UringBackend> make_uring(unsigned queue_depth, ThreadPool& pool, Stats& stats,
                                         uint64_t align, uint64_t split_bytes, std::string* reason) {
  auto u = std::make_unique<Uring>(queue_depth, pool, stats, align, split_bytes);
  if (u->init(reason) < 0) return nullptr;
  *reason = "io_uring permitted";
  return u;
}

#endif

}  // namespace sc
