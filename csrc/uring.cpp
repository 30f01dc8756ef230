#include "uring.hpp"

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
#include <sys/uio.h>
#include <unistd.h>
#endif

namespace sc {

#ifndef STORECOMP_HAVE_LIBURING

UringProbe probe_uring() { return {false, false, "built without liburing"}; }

std::unique_ptr<UringBackend> make_uring(unsigned, ThreadPool&, Stats&, uint64_t, std::string* reason) {
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

// One ring, one submitter. Callers append pieces to the pending queue under
// mu_ and wake the reaper through an eventfd (a multishot poll on it sits in
// the ring); only the reaper touches the submission queue. Each round it
// fills the ring from the pending queue (at most queue_depth pieces in
// flight), then submits and waits for completions in one system call, as
// fio does. Pieces that need the aligned bounce
// area (unaligned O_DIRECT reads) go to the thread pool, and so do large
// AUTO reads for their page-cache attempt (misses come back here).
class Uring final : public UringBackend {
 public:
  Uring(unsigned qd, ThreadPool& pool, Stats& stats, uint64_t align)
      : qd_(qd), pool_(pool), stats_(stats), align_(align) {}

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
    if (io_uring_register_buffers(&ring_, &iov, 1) < 0) return false;
    fixed_base_ = addr;
    fixed_len_ = len;
    return true;
  }

  void unregister_buffer(uintptr_t addr) override {
    std::lock_guard<std::mutex> g(mu_);
    // After shutdown the ring is gone (its fd may already belong to another
    // ring); only the registration of addr is undone.
    if (!fixed_len_ || stopping_ || addr != fixed_base_) return;
    io_uring_unregister_buffers(&ring_);
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
        return false;  // unaligned O_DIRECT read: bounce in the pool
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
        io_uring_prep_read_fixed(sqe, fd, buf, len, off, 0);
      else
        io_uring_prep_read(sqe, fd, buf, len, off);
      if (p->issued == ISSUED_NOWAIT) sqe->rw_flags = RWF_NOWAIT;
    } else {
      if (fixed)
        io_uring_prep_write_fixed(sqe, fd, buf, len, off, 0);
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
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (!sqe) break;
      pending_.pop_front();
      if (!prep(sqe, p)) {
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
  std::thread reaper_;
};

}  // namespace

std::unique_ptr<UringBackend> make_uring(unsigned queue_depth, ThreadPool& pool, Stats& stats,
                                         uint64_t align, std::string* reason) {
  auto u = std::make_unique<Uring>(queue_depth, pool, stats, align);
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
