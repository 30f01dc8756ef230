#include "uring.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#ifdef STORECOMP_HAVE_LIBURING
#include <liburing.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
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

namespace {

// AUTO reads of at least kNowaitHandoffBytes try the page cache in the
// thread pool rather than in the ring. A cached read is a copy done by
// whichever thread issues it; issued from the ring, all copies would fall to
// the one submitting thread, while the pool spreads them over every core.

// Aligned memory for unaligned O_DIRECT reads issued in the ring: a read of
// [off, off+len) into an unaligned address becomes an aligned read of
// [round_down(off), round_up(off+len)) into arena units, copied to its
// destination when it completes. Units are handed out first-fit from a
// cursor (pieces complete roughly in submission order); a piece that finds
// no room waits in the queue until completions free some, so unaligned
// reads run at the ring's queue depth, bounded only by the arena's size.
// Reaper thread only (and shutdown, after the reaper has exited).
class BounceArena {
 public:
  ~BounceArena() {
    if (map_) ::munmap(map_, map_bytes_);
  }
  // Maps `bytes` (a multiple of `unit`), 2 MiB aligned with transparent huge
  // pages asked for (a 1 MiB read then is one or two device segments); false
  // when the memory cannot be had.
  bool init(uint64_t bytes, uint64_t unit) {
    constexpr uint64_t kHuge = 2ull << 20;
    map_bytes_ = bytes + kHuge;
    void* p = ::mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      map_ = nullptr;
      return false;
    }
    map_ = static_cast<uint8_t*>(p);
    auto a = reinterpret_cast<uintptr_t>(map_);
    base_ = map_ + ((kHuge - a % kHuge) % kHuge);
#ifdef MADV_HUGEPAGE
    ::madvise(base_, bytes, MADV_HUGEPAGE);  // advisory
#endif
    bytes_ = bytes;
    unit_ = unit;
    used_.assign(bytes / unit, 0);
    return true;
  }
  bool ready() const { return base_ != nullptr; }
  uint8_t* base() const { return base_; }
  uint64_t bytes() const { return bytes_; }
  uint64_t unit() const { return unit_; }
  uint32_t units_for(uint64_t nbytes) const { return static_cast<uint32_t>((nbytes + unit_ - 1) / unit_); }
  // First unit of `n` free consecutive units, marked used; -1 when none.
  int64_t alloc(uint32_t n) {
    size_t total = used_.size();
    if (n == 0 || n > total) return -1;
    for (int pass = 0; pass < 2; ++pass) {
      size_t i = pass == 0 ? cursor_ : 0;
      size_t end = pass == 0 ? total : std::min(cursor_ + n, total);
      size_t run = 0;
      for (; i < end; ++i) {
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
  uint8_t* map_ = nullptr;
  uint64_t map_bytes_ = 0;
  uint8_t* base_ = nullptr;
  uint64_t bytes_ = 0, unit_ = 4096;
  std::vector<uint8_t> used_;
  size_t cursor_ = 0;
};

// Fixed buffer slots (a sparse table where the kernel has one, 5.19+): the
// staging pool the caller registers, and the bounce arena.
constexpr unsigned kFixedStaging = 0;
constexpr unsigned kFixedBounce = 1;
constexpr uint64_t kBounceArenaBytes = 16ull << 20;

// One ring, one submitter. Callers append pieces to the pending queue under
// mu_ and wake the reaper through an eventfd (a multishot poll on it sits in
// the ring); only the reaper touches the submission queue. Each round it
// fills the ring from the pending queue (at most queue_depth pieces in
// flight), then submits and waits for completions in one system call, as
// fio does. Unaligned O_DIRECT reads bounce through the arena, in the
// ring; large AUTO reads go to the thread pool for their page-cache attempt
// (misses come back here).
class Uring final : public UringBackend {
 public:
  Uring(unsigned qd, ThreadPool& pool, Stats& stats, uint64_t align, uint64_t split_bytes)
      : qd_(qd), pool_(pool), stats_(stats), align_(align) {
    // Room for the largest piece twice over (with its aligned head and tail).
    arena_bytes_ = std::max(kBounceArenaBytes, 2 * (split_bytes + 2 * std::max<uint64_t>(align, 4096)));
  }

  int init() {
    // COOP_TASKRUN: completions are posted when the reaper next enters the
    // kernel instead of by an interrupt to it (fewer IPIs and context
    // switches at high IOPS); kernels before 5.19 refuse the flag.
    int r = io_uring_queue_init(qd_ + 1, &ring_, IORING_SETUP_COOP_TASKRUN);  // +1: re-arming the wake poll
    if (r == -EINVAL) r = io_uring_queue_init(qd_ + 1, &ring_, 0);
    if (r < 0) return r;
    efd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd_ < 0) {
      int err = errno;
      io_uring_queue_exit(&ring_);
      return -err;
    }
    sparse_ = io_uring_register_buffers_sparse(&ring_, 2) == 0;
    // Buffered reads that miss the page cache block in io-wq workers, by
    // default at most 4 per CPU: on a small machine that caps a cold
    // buffered (page-cache tier) pass at a fraction of the ring's queue
    // depth. Allow one bounded worker per ring entry (advisory).
    unsigned workers[2] = {qd_, 0};
    (void)io_uring_register_iowq_max_workers(&ring_, workers);
    arm_wake();
    io_uring_submit(&ring_);
    inited_ = true;
    reaper_ = std::thread([this] { reap(); });
    pool_.set_miss_sink([this](Piece* p) { submit(&p, 1); });
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
      } else {
        pending_.insert(pending_.end(), pieces, pieces + n);
        wake = reaper_waiting_;
      }
    }
    if (wake) this->wake();
    cancel(cancelled);
  }

  bool register_buffer(uintptr_t addr, uint64_t len) override {
    std::lock_guard<std::mutex> g(mu_);
    if (fixed_len_ || stopping_) return false;
    struct iovec iov = {reinterpret_cast<void*>(addr), static_cast<size_t>(len)};
    int r = sparse_ ? io_uring_register_buffers_update_tag(&ring_, kFixedStaging, &iov, nullptr, 1)
                    : io_uring_register_buffers(&ring_, &iov, 1);
    if (r < 0) return false;
    fixed_base_ = addr;
    fixed_len_ = len;
    return true;
  }

  void unregister_buffer(uintptr_t addr) override {
    std::lock_guard<std::mutex> g(mu_);
    // After shutdown the ring is gone (its fd may already belong to another
    // ring); only the registration of addr is undone.
    if (!fixed_len_ || stopping_ || addr != fixed_base_) return;
    if (sparse_) {
      struct iovec none = {nullptr, 0};  // an empty slot; reads still in flight keep the old pages pinned
      io_uring_register_buffers_update_tag(&ring_, kFixedStaging, &none, nullptr, 1);
    } else {
      io_uring_unregister_buffers(&ring_);
    }
    fixed_base_ = 0;
    fixed_len_ = 0;
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
    io_uring_queue_exit(&ring_);  // drops the fixed buffer registration too
    arena_.reset();
    ::close(efd_);
    inited_ = false;
    fixed_base_ = 0;
    fixed_len_ = 0;
  }

 private:
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
    if (direct_aligned(off, p->len - p->done, r.addr + p->rel + p->done, align_)) return false;
    return r.file->direct_fd() >= 0;
  }

  // Reserves arena units for a bouncing piece; false when there is no room
  // now (or no arena at all: then *to_pool is set).
  bool reserve_bounce(Piece* p, bool* to_pool) {
    if (!arena_) {
      arena_ = std::make_unique<BounceArena>();
      if (arena_->init(arena_bytes_, std::max<uint64_t>(align_, 4096))) {
        struct iovec iov = {arena_->base(), static_cast<size_t>(arena_->bytes())};
        arena_fixed_ = sparse_ && io_uring_register_buffers_update_tag(&ring_, kFixedBounce, &iov, nullptr, 1) == 1;
      }
    }
    if (!arena_->ready()) {
      *to_pool = true;  // no memory for an arena: the pool's per-thread bounce areas
      return false;
    }
    Request& r = p->batch->reqs[p->req];
    uint64_t off = r.offset + p->rel + p->done;
    uint64_t skip = off % align_;
    uint64_t alen = (skip + p->len - p->done + align_ - 1) / align_ * align_;
    int64_t first = arena_->alloc(arena_->units_for(alen));
    if (first < 0) return false;
    p->bounce_first = static_cast<uint32_t>(first);
    p->bounce_units = arena_->units_for(alen);
    p->bounce_skip = static_cast<uint32_t>(skip);
    return true;
  }

  void release_bounce(Piece* p) {
    if (p->bounce_units) arena_->release(p->bounce_first, p->bounce_units);
    p->bounce_units = 0;
  }

  // Prepares an SQE for a piece with reserved arena units.
  void prep_bounce(io_uring_sqe* sqe, Piece* p) {
    Request& r = p->batch->reqs[p->req];
    uint64_t off = r.offset + p->rel + p->done;
    uint64_t aoff = off - p->bounce_skip;
    auto alen = static_cast<unsigned>(
        (p->bounce_skip + p->len - p->done + align_ - 1) / align_ * align_);
    uint8_t* buf = arena_->base() + static_cast<uint64_t>(p->bounce_first) * arena_->unit();
    int fd = r.file->direct_fd();
    if (arena_fixed_) {
      io_uring_prep_read_fixed(sqe, fd, buf, alen, aoff, kFixedBounce);
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
    bool aligned = direct_aligned(off, len, addr, align_);
    int fd = f.fd_buffered;
    p->issued = ISSUED_BUFFERED;
    if (r.op == OP_WRITE) {
      if (p->mode == MODE_DIRECT) {  // AUTO writes are buffered
        int dfd = aligned ? f.direct_fd() : -1;
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
      } else if (!aligned) {
        return false;  // unaligned O_DIRECT read without an arena: bounce in the pool
      } else {
        fd = dfd;
        p->issued = ISSUED_DIRECT;
      }
    }
    void* buf = reinterpret_cast<void*>(addr);
    bool fixed = p->issued == ISSUED_DIRECT && fixed_len_ && addr >= fixed_base_ &&
                 addr + len <= fixed_base_ + fixed_len_;
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

  // Prepares SQEs for pending pieces; the reaper submits them.
  void fill_locked(std::vector<Piece*>* to_pool) {
    while (inflight_ < qd_ && !pending_.empty()) {
      Piece* p = pending_.front();
      if (probe_in_pool(p)) {
        pending_.pop_front();
        p->nowait_probe = true;
        to_pool->push_back(p);
        continue;
      }
      bool bounce = needs_bounce(p);
      if (bounce) {
        bool no_arena = false;
        if (!reserve_bounce(p, &no_arena)) {
          if (!no_arena) break;  // the arena is full: wait for completions, keeping the order
          pending_.pop_front();
          to_pool->push_back(p);
          continue;
        }
      }
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (!sqe) {
        if (bounce) release_bounce(p);
        break;
      }
      pending_.pop_front();
      if (bounce) {
        prep_bounce(sqe, p);
      } else if (!prep(sqe, p)) {
        io_uring_prep_nop(sqe);  // the SQE is taken; make it a no-op
        io_uring_sqe_set_data(sqe, nullptr);
        to_pool->push_back(p);
      }
      inflight_++;
    }
  }

  // A tag no piece can have: the completion of the wake-up poll.
  static void* wake_tag() { return reinterpret_cast<void*>(uintptr_t{1}); }

  // Puts the wake-up poll on efd_ in the ring (submitted with the next
  // round). Multishot where the kernel has it (5.13+), else one-shot and
  // re-armed after each wake-up.
  void arm_wake() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {  // cannot happen: the ring has qd_ + 1 entries and every round submits them all
      rearm_ = true;
      return;
    }
    rearm_ = false;
    if (multishot_)
      io_uring_prep_poll_multishot(sqe, efd_, POLLIN);
    else
      io_uring_prep_poll_add(sqe, efd_, POLLIN);
    io_uring_sqe_set_data(sqe, wake_tag());
  }

  void wake() {
    uint64_t one = 1;
    ssize_t n;
    do {
      n = ::write(efd_, &one, sizeof one);
    } while (n < 0 && errno == EINTR);  // EAGAIN: the counter is full, a wake-up is pending anyway
  }

  // Decides what a completion means for its piece: done, resubmit, or error.
  void handle(Piece* p, int res, std::vector<Piece*>* again,
              std::vector<std::pair<Piece*, int>>* done) {
    Request& r = p->batch->reqs[p->req];
    if (p->issued == ISSUED_BOUNCE) {
      handle_bounce(p, r, res, again, done);
      return;
    }
    if (res < 0) {
      if (res == -EAGAIN && p->issued == ISSUED_NOWAIT) {
        stats_.nowait_misses++;
        p->nowait_tried = true;
        again->push_back(p);
      } else if (res == -EOPNOTSUPP && p->issued == ISSUED_NOWAIT) {
        p->nowait_tried = true;  // file system without RWF_NOWAIT
        p->mode = MODE_BUFFERED;
        again->push_back(p);
      } else if (res == -EINTR || res == -EAGAIN) {
        again->push_back(p);
      } else {
        stats_.errors++;
        done->emplace_back(p, -res);
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
      done->emplace_back(p, 0);
    } else if (n == 0 && r.op == OP_READ) {
      done->emplace_back(p, 0);  // end of file
    } else if (n == 0) {
      done->emplace_back(p, EIO);
    } else if (p->issued == ISSUED_DIRECT && r.op == OP_READ) {
      done->emplace_back(p, 0);  // a short O_DIRECT read ends at end of file
    } else {
      if (p->issued == ISSUED_NOWAIT) {
        stats_.nowait_misses++;  // partly cached: the rest with O_DIRECT
        p->nowait_tried = true;
      }
      again->push_back(p);
    }
  }

  // A bounced read completed: copy the wanted bytes to the destination and
  // free the arena units. A short aligned read means end of file.
  void handle_bounce(Piece* p, Request& r, int res, std::vector<Piece*>* again,
                     std::vector<std::pair<Piece*, int>>* done) {
    if (res < 0) {
      release_bounce(p);
      if (res == -EINTR || res == -EAGAIN) {
        again->push_back(p);
      } else {
        stats_.errors++;
        done->emplace_back(p, -res);
      }
      return;
    }
    uint64_t want = p->len - p->done;
    auto got = static_cast<uint64_t>(res);
    uint64_t n = got > p->bounce_skip ? std::min<uint64_t>(got - p->bounce_skip, want) : 0;
    const uint8_t* src = arena_->base() + static_cast<uint64_t>(p->bounce_first) * arena_->unit() + p->bounce_skip;
    std::memcpy(reinterpret_cast<void*>(r.addr + p->rel + p->done), src, n);
    release_bounce(p);
    stats_.bytes_read += n;
    p->done += n;
    done->emplace_back(p, 0);
  }

  void reap() {
    std::vector<Piece*> again, to_pool, cancelled;
    std::vector<std::pair<Piece*, int>> done;
    for (;;) {
      bool exit;
      if (rearm_) arm_wake();
      {
        std::lock_guard<std::mutex> g(mu_);
        fill_locked(&to_pool);
        exit = stopping_ && inflight_ == 0;
        reaper_waiting_ = !exit;
      }
      if (!to_pool.empty()) pool_.submit(to_pool.data(), to_pool.size());
      to_pool.clear();
      if (exit) return;
      int r = io_uring_submit_and_wait(&ring_, 1);
      {
        std::lock_guard<std::mutex> g(mu_);
        reaper_waiting_ = false;
      }
      if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
        std::this_thread::yield();  // cannot happen with a valid ring; avoid spinning hot
      }
      unsigned head, count = 0, pieces = 0;
      io_uring_cqe* cqe;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        count++;
        void* data = io_uring_cqe_get_data(cqe);
        if (data == wake_tag()) {
          uint64_t v;
          while (::read(efd_, &v, sizeof v) > 0) {
          }
          if (cqe->res < 0 && multishot_) multishot_ = false;  // a kernel without multishot poll
          if (!(cqe->flags & IORING_CQE_F_MORE)) rearm_ = true;
          continue;
        }
        pieces++;  // a piece, or the no-op left by one handed to the pool
        if (data) handle(static_cast<Piece*>(data), cqe->res, &again, &done);
      }
      io_uring_cq_advance(&ring_, count);
      {
        std::lock_guard<std::mutex> g(mu_);
        inflight_ -= pieces;
        if (stopping_) {
          cancelled.insert(cancelled.end(), again.begin(), again.end());
        } else {
          pending_.insert(pending_.begin(), again.begin(), again.end());
        }
      }
      again.clear();
      for (auto& [p, err] : done) p->batch->complete(*p, p->done, err);
      done.clear();
      cancel(cancelled);
      cancelled.clear();
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
  bool reaper_waiting_ = false;  // the reaper may be asleep: callers write efd_
  int efd_ = -1;
  bool multishot_ = true;  // reaper thread only (and init, before it starts)
  bool rearm_ = false;     // reaper thread only
  uintptr_t fixed_base_ = 0;
  uint64_t fixed_len_ = 0;
  bool sparse_ = false;  // fixed buffers in a sparse table (kFixedStaging, kFixedBounce)
  std::unique_ptr<BounceArena> arena_;  // made on the first unaligned O_DIRECT read
  uint64_t arena_bytes_ = kBounceArenaBytes;
  bool arena_fixed_ = false;
  std::thread reaper_;
};

}  // namespace

std::unique_ptr<UringBackend> make_uring(unsigned queue_depth, ThreadPool& pool, Stats& stats,
                                         uint64_t align, uint64_t split_bytes, std::string* reason) {
  auto u = std::make_unique<Uring>(queue_depth, pool, stats, align, split_bytes);
  int r = u->init();
  if (r < 0) {
    *reason = std::string("io_uring_queue_init: ") + std::strerror(-r);
    return nullptr;
  }
  *reason = "io_uring permitted";
  return u;
}

#endif

}  // namespace sc
