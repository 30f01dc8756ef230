#include "engine.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include "aead.hpp"
#include "copy.hpp"
#include "crc32c.hpp"
#include "uring.hpp"

namespace sc {

namespace {

uint64_t round_down(uint64_t x, uint64_t a) { return x - x % a; }
uint64_t round_up(uint64_t x, uint64_t a) { return round_down(x + a - 1, a); }

// pread until `len` bytes, end of file or an error. A short O_DIRECT read
// means end of file: the next read would start unaligned, so stop there.
uint64_t pread_full(int fd, uint8_t* dst, uint64_t len, uint64_t off, bool direct, int* err) {
  uint64_t done = 0;
  while (done < len) {
    ssize_t r = ::pread(fd, dst + done, len - done, static_cast<off_t>(off + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      *err = errno;
      break;
    }
    if (r == 0) break;
    bool short_read = static_cast<uint64_t>(r) < len - done;
    done += static_cast<uint64_t>(r);
    if (direct && short_read) break;
  }
  return done;
}

uint64_t pwrite_full(int fd, const uint8_t* src, uint64_t len, uint64_t off, int* err) {
  uint64_t done = 0;
  while (done < len) {
    ssize_t r = ::pwrite(fd, src + done, len - done, static_cast<off_t>(off + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      *err = errno;
      break;
    }
    if (r == 0) {
      *err = EIO;
      break;
    }
    done += static_cast<uint64_t>(r);
  }
  return done;
}

// Reads [off, off+len) with O_DIRECT through the aligned bounce area, in
// reads of whole `align` units (at most the bounce area's whole units).
uint64_t bounce_read(int fd, uint64_t off, uint64_t len, uint8_t* dst, uint64_t align,
                     uint8_t* bounce, uint64_t bounce_bytes, int* err) {
  uint64_t room = round_down(bounce_bytes, align);
  if (room == 0) {
    *err = EINVAL;  // a unit larger than the bounce area
    return 0;
  }
  uint64_t done = 0;
  while (done < len) {
    uint64_t cur = off + done;
    uint64_t aoff = round_down(cur, align);
    uint64_t skip = cur - aoff;
    uint64_t want = std::min(len - done, room - skip);
    uint64_t alen = round_up(skip + want, align);
    uint64_t got = pread_full(fd, bounce, alen, aoff, true, err);
    if (*err) break;
    uint64_t n = got > skip ? std::min(got - skip, want) : 0;
    std::memcpy(dst + done, bounce + skip, n);
    done += n;
    if (n < want) break;  // end of file
  }
  return done;
}

// O_DIRECT read of any range into any address, in reads of whole `align`
// units of the file into memory aligned to `mem_align` (the bounce area must
// be). When the destination and the file offset share their alignment, only
// the unaligned head and tail go through the bounce area; the middle lands
// in place.
uint64_t direct_read(int fd, uint64_t off, uint64_t len, uint8_t* dst, uint64_t align, uint64_t mem_align,
                     uint8_t* bounce, uint64_t bounce_bytes, Stats& stats, int* err) {
  auto addr = reinterpret_cast<uintptr_t>(dst);
  if (off % align == 0 && len % align == 0 && addr % mem_align == 0) return pread_full(fd, dst, len, off, true, err);
  stats.bounce_pieces++;
  uint64_t head = std::min(round_up(off, align) - off, len);
  if (addr % align != off % align || (addr + head) % mem_align != 0)
    return bounce_read(fd, off, len, dst, align, bounce, bounce_bytes, err);
  uint64_t mid = round_down(len - head, align);
  uint64_t tail = len - head - mid;
  uint64_t done = 0;
  if (head) {
    done = bounce_read(fd, off, head, dst, align, bounce, bounce_bytes, err);
    if (*err || done < head) return done;
  }
  if (mid) {
    uint64_t got = pread_full(fd, dst + head, mid, off + head, true, err);
    done += got;
    if (*err || got < mid) return done;
  }
  if (tail) done += bounce_read(fd, off + head + mid, tail, dst + head + mid, align, bounce, bounce_bytes, err);
  return done;
}

}  // namespace

bool direct_aligned(uint64_t offset, uint64_t len, uintptr_t addr, uint64_t align) {
  return offset % align == 0 && len % align == 0 && addr % align == 0;
}

// ---------------------------------------------------------------- files

FileEntry::~FileEntry() {
  if (fd_buffered >= 0) ::close(fd_buffered);
  int fd = fd_direct.load();
  if (fd >= 0) ::close(fd);
}

int FileEntry::direct_fd() {
  int fd = fd_direct.load(std::memory_order_acquire);
  if (fd >= 0 || direct_unsupported.load()) return fd;
  std::lock_guard<std::mutex> g(open_mu);
  fd = fd_direct.load();
  if (fd >= 0 || direct_unsupported.load()) return fd;
  // The O_DIRECT descriptor must refer to the inode fd_buffered opened, not
  // to whatever the path names now (a writer may have renamed another file
  // over it): reopen through /proc/self/fd, and check the identity either way.
  int flags = (writable ? O_RDWR : O_RDONLY) | O_DIRECT | O_CLOEXEC;
  std::string self_path = "/proc/self/fd/" + std::to_string(fd_buffered);
  fd = ::open(self_path.c_str(), flags);
  if (fd < 0 && errno == ENOENT) fd = ::open(path.c_str(), flags);  // no /proc: the path, checked below
  struct stat a, b;
  if (fd >= 0 && (::fstat(fd, &a) != 0 || ::fstat(fd_buffered, &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino)) {
    ::close(fd);  // another file now: this one is read through the page cache only
    fd = -1;
  }
  if (fd < 0) {
    direct_unsupported = true;  // e.g. tmpfs: EINVAL; reads go buffered
    return -1;
  }
#ifdef STATX_DIOALIGN
  struct statx sx;
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) &&
      sx.stx_dio_mem_align > 0 && sx.stx_dio_offset_align > 0) {
    dio_mem_align = sx.stx_dio_mem_align;
    dio_offset_align = sx.stx_dio_offset_align;
  }
#endif
  fd_direct.store(fd, std::memory_order_release);
  return fd;
}

bool FileEntry::direct_ok(uint64_t offset, uint64_t len, uintptr_t addr, uint64_t align) const {
  if (!dio_mem_align) return direct_aligned(offset, len, addr, align);
  return offset % dio_offset_align == 0 && len % dio_offset_align == 0 && addr % dio_mem_align == 0;
}

FileMapping::~FileMapping() {
  if (addr != nullptr) ::munmap(const_cast<uint8_t*>(addr), len);
}

std::shared_ptr<const FileMapping> FileEntry::mapping(uint64_t end) {
  std::lock_guard<std::mutex> g(map_mu_);
  if (map_ && map_->len >= end) return map_;
  if (map_unsupported_ || writable) return nullptr;
  struct stat st;
  if (::fstat(fd_buffered, &st) != 0) return nullptr;
  if (!S_ISREG(st.st_mode)) {
    map_unsupported_ = true;  // a device or a pipe: reads stay system calls
    return nullptr;
  }
  auto size = static_cast<uint64_t>(st.st_size);
  if (map_ && size <= map_->len) return map_;  // not grown: a read past the end is short
  if (size == 0) return nullptr;  // nothing to map (and /proc files say 0 but have bytes): a system call
  void* a = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd_buffered, 0);
  if (a == MAP_FAILED) {
    map_unsupported_ = true;  // e.g. a file system without mmap: reads stay system calls
    return nullptr;
  }
  install_sigbus_guard();  // before any copy touches the new mapping
  auto m = std::make_shared<FileMapping>();
  m->addr = static_cast<const uint8_t*>(a);
  m->len = size;
  map_ = m;
  return m;
}

void FileEntry::release_mapping() {
  std::shared_ptr<const FileMapping> old;  // unmapped after the lock is released, unless a copy still holds it
  std::lock_guard<std::mutex> g(map_mu_);
  old.swap(map_);
}

uint32_t FileTable::open(const std::string& path, bool writable, bool create) {
  int flags = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC;
  if (writable && create) flags |= O_CREAT;
  int fd = ::open(path.c_str(), flags, 0644);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), path);
  struct stat st;
  int e = ::fstat(fd, &st) != 0 ? errno : (S_ISDIR(st.st_mode) ? EISDIR : 0);
  if (e) {
    ::close(fd);
    throw std::system_error(e, std::generic_category(), path);
  }
  auto entry = std::make_shared<FileEntry>();
  entry->path = path;
  entry->writable = writable;
  entry->fd_buffered = fd;
  std::lock_guard<std::mutex> g(mu_);
  uint32_t id = next_id_++;
  by_id_[id] = std::move(entry);
  return id;
}

std::shared_ptr<FileEntry> FileTable::get(uint32_t id) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

void FileTable::close(uint32_t id) {
  std::shared_ptr<FileEntry> e;
  {
    std::lock_guard<std::mutex> g(mu_);
    auto it = by_id_.find(id);
    if (it == by_id_.end()) return;
    e = std::move(it->second);
    by_id_.erase(it);
  }
}

size_t FileTable::size() {
  std::lock_guard<std::mutex> g(mu_);
  return by_id_.size();
}

// ---------------------------------------------------------------- batches

namespace {

// Chunk k of request r lies inside one piece (no piece boundary within it).
bool chunk_in_piece(const Request& r, uint64_t k) {
  uint64_t start = k * r.crc_step, end = std::min(start + r.crc_step, r.length);
  return start / r.piece_bytes == (end - 1) / r.piece_bytes;
}

}  // namespace

// The checks of request r's chunks (see Request::crc_step) once piece p has
// landed with `got` bytes: the chunks inside p now, from what p read; the
// chunks across piece boundaries when p is the request's last piece, from
// what the request read (r.valid). Nothing after a failed piece: the
// request fails as a whole.
void Batch::check_piece(Request& r, const Piece& p, uint64_t got, int err) {
  auto* base = reinterpret_cast<const uint8_t*>(r.addr);
  const uint64_t s = r.crc_step;
  if (!err && !p.crc_done) {
    uint64_t read_end = p.rel + got;
    for (uint64_t k = (p.rel + s - 1) / s; k * s < read_end; ++k) {
      uint64_t end = std::min(k * s + s, r.length);
      if (end > p.rel + p.len) break;  // runs into the next piece
      r.crc_out[k] = crc32c(0, base + k * s, std::min(end, read_end) - k * s);
    }
  }
  if (r.pieces_left.fetch_sub(1) != 1 || r.err.load() != 0) return;
  if (r.piece_bytes % s == 0) return;  // every piece boundary is a chunk boundary: none spans
  uint64_t valid = r.valid.load();
  for (uint64_t k = 0; k * s < valid; ++k)
    if (!chunk_in_piece(r, k)) r.crc_out[k] = crc32c(0, base + k * s, std::min(k * s + s, valid) - k * s);
}

void Batch::complete(Piece& p, uint64_t got, int err) {
  Request& r = reqs[p.req];
  if (err) {
    int expected = 0;
    if (r.err.compare_exchange_strong(expected, err)) r.err_offset = r.offset + p.rel + got;
  }
  if (got < p.len) {
    uint64_t end = p.rel + got;
    uint64_t cur = r.valid.load();
    while (end < cur && !r.valid.compare_exchange_weak(cur, end)) {
    }
  }
  if (r.crc_step) {
    check_piece(r, p, got, err);
  } else if (r.aead) {
    aead_defer(r, p, got, err);  // opens the piece's segments on the AEAD threads, then calls piece_done()
    return;
  }
  piece_done();
}

void Batch::piece_done() {
  if (left.fetch_sub(1) == 1) {
    if (populate) populate->push(*this);
    std::shared_ptr<Batch> keep;
    std::lock_guard<std::mutex> g(mu);
    finished = true;
    keep.swap(self);
    cv.notify_all();
    // `keep` is released after the lock guard: it may free this batch.
  }
}

bool Batch::wait(double timeout) {
  std::unique_lock<std::mutex> g(mu);
  if (timeout < 0) {
    cv.wait(g, [this] { return finished; });
    return true;
  }
  return cv.wait_for(g, std::chrono::duration<double>(timeout), [this] { return finished; });
}

bool Batch::is_finished() {
  std::lock_guard<std::mutex> g(mu);
  return finished;
}

bool nowait_read(Piece& p, Stats& stats, int* err) {
  Request& r = p.batch->reqs[p.req];
  uint64_t len = p.len - p.done;
  struct iovec iov = {reinterpret_cast<void*>(r.addr + p.rel + p.done), static_cast<size_t>(len)};
  auto off = static_cast<off_t>(r.offset + p.rel + p.done);
  p.nowait_tried = true;
  ssize_t n;
  do {
    n = ::preadv2(r.file->fd_buffered, &iov, 1, off, RWF_NOWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EOPNOTSUPP || errno == EINVAL) {
      p.mode = MODE_BUFFERED;  // no RWF_NOWAIT on this file system
      return false;
    }
    if (errno == EAGAIN) {
      stats.nowait_misses++;
      return false;
    }
    *err = errno;
    return true;
  }
  auto got = static_cast<uint64_t>(n);
  p.done += got;
  stats.bytes_read += got;
  if (got == len) {
    stats.nowait_hits++;
    return true;
  }
  if (got == 0) return true;  // end of file
  stats.nowait_misses++;  // partly cached
  return false;
}

bool mapped_read(Piece& p, Stats& stats, int* err) {
  Request& r = p.batch->reqs[p.req];
  if (p.done != 0 || r.op != OP_READ) return false;
  const uint64_t off = r.offset + p.rel;
  auto m = r.file->mapping(off + p.len);
  if (!m) return false;
  const uint64_t avail = m->len > off ? std::min(p.len, m->len - off) : 0;
  // The chunks inside this piece (as check_piece: chunk k spans [k*s,
  // min(k*s + s, length)) of the request), clipped at what can be read,
  // in piece-relative bytes.
  uint64_t crc_begin = 0, crc_end = 0, step = 0;
  uint32_t* crcs = nullptr;
  if (r.crc_step) {
    const uint64_t s = r.crc_step, piece_end = p.rel + p.len, read_end = p.rel + avail;
    const uint64_t k0 = (p.rel + s - 1) / s;
    const uint64_t k1 = piece_end == r.length ? (r.length + s - 1) / s : piece_end / s;
    if (k0 < k1 && k0 * s < read_end) {
      step = s;
      crcs = r.crc_out + k0;
      crc_begin = k0 * s - p.rel;
      crc_end = std::min(std::min(k1 * s, r.length), read_end) - p.rel;
    }
  }
  bool faulted = false;
  auto* dst = reinterpret_cast<uint8_t*>(r.addr + p.rel);
  uint64_t got = mapped_copy(dst, m->addr + off, avail, crc_begin, crc_end, step, crcs, p.stream, &faulted);
  if (!faulted && got > 0 && !r.crc_step) {
    // A file shrunk under the mapping reads as zeros up to the end of the page
    // holding its new end (SIGBUS only past it). Without checksums to catch
    // that, the size after the copy says whether every byte copied was still
    // the file's (one fstat, ~0.3 us; reads with checks skip it: zeros fail
    // the crc unless they are the file's bytes).
    struct stat st;
    if (::fstat(r.file->fd_buffered, &st) != 0 || static_cast<uint64_t>(st.st_size) < off + got) faulted = true;
  }
  p.crc_done = true;
  p.done += got;
  stats.bytes_read += got;
  stats.mapped_pieces++;
  if (faulted) {
    stats.mapped_faults++;
    *err = ESTALE;  // the file shrank under the mapping: it changed while being read
  }
  return true;
}

uint64_t run_piece_sync(Piece& p, uint64_t align, uint64_t bounce_bytes, uint8_t* bounce,
                        Stats& stats, int* err) {
  Request& r = p.batch->reqs[p.req];
  FileEntry& f = *r.file;
  uint64_t off = r.offset + p.rel + p.done;
  uint64_t len = p.len - p.done;
  auto* dst = reinterpret_cast<uint8_t*>(r.addr + p.rel + p.done);
  uint64_t got = 0;
  if (r.op == OP_WRITE) {
    int fd = -1;
    if (p.mode == MODE_DIRECT) {
      fd = f.direct_fd();
      if (fd < 0 || !f.direct_ok(off, len, reinterpret_cast<uintptr_t>(dst), align)) {
        stats.direct_fallbacks++;
        fd = -1;
      }
    }
    got = pwrite_full(fd >= 0 ? fd : f.fd_buffered, dst, len, off, err);
    stats.bytes_written += got;
    return p.done + got;
  }
  uint8_t mode = p.mode;
  if (mode == MODE_AUTO && !p.nowait_tried) {
    uint64_t before = p.done;
    if (nowait_read(p, stats, err)) return p.done;
    mode = p.mode == MODE_BUFFERED ? MODE_BUFFERED : MODE_DIRECT;
    uint64_t n = p.done - before;
    off += n;
    len -= n;
    dst += n;
  }
  int fd = -1;
  if (mode != MODE_BUFFERED) {
    fd = f.direct_fd();
    if (fd < 0) stats.direct_fallbacks++;
  }
  // A bounce reads into the part of the bounce area aligned as the file needs (statx
  // dio_mem_align may exceed align); a file that needs more than the area, or more
  // than is left of it once aligned, has the piece read buffered.
  uint64_t unit = f.dio_align(align), mem = f.mem_align(align);
  uint64_t pad = mem <= bounce_bytes ? (mem - reinterpret_cast<uintptr_t>(bounce) % mem) % mem : bounce_bytes;
  uint64_t room = round_down(bounce_bytes - pad, unit);
  if (fd >= 0 && !f.direct_ok(off, len, reinterpret_cast<uintptr_t>(dst), align) && room == 0) {
    stats.direct_fallbacks++;
    fd = -1;
  }
  if (fd >= 0 && f.direct_ok(off, len, reinterpret_cast<uintptr_t>(dst), align))
    got += pread_full(fd, dst, len, off, true, err);
  else if (fd >= 0)
    got += direct_read(fd, off, len, dst, unit, mem, bounce + pad, room, stats, err);
  else
    got += pread_full(f.fd_buffered, dst, len, off, false, err);
  stats.bytes_read += got;
  return p.done + got;
}

// ---------------------------------------------------------------- thread pool

ThreadPool::ThreadPool(unsigned threads, uint64_t align, uint64_t bounce_bytes, Stats& stats)
    : align_(align), bounce_bytes_(bounce_bytes), stats_(stats) {
  cpu_set_t set;
  CPU_ZERO(&set);
  cpus_ = sched_getaffinity(0, sizeof(set), &set) == 0 ? static_cast<size_t>(CPU_COUNT(&set)) : threads;
  if (cpus_ == 0) cpus_ = 1;
  std::lock_guard<std::mutex> g(mu_);
  awake_ = threads;  // each worker counts as awake until its first wait
  for (unsigned i = 0; i < threads; ++i) workers_.emplace_back([this] { worker(); });
}

ThreadPool::~ThreadPool() { shutdown(); }

void ThreadPool::submit(Piece* const* pieces, size_t n, bool cpu_bound) {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (!stopping_) {
      queue_.insert(queue_.end(), pieces, pieces + n);
      // Wake a worker per piece, not all of them (a worker drains the queue
      // before it sleeps): a wake-up costs a context switch. CPU-bound pieces
      // keep no more workers awake than there are CPUs: more only take turns
      // on them (a data set's mapped 64 KiB samples on 2 CPUs: 227k/s with 4
      // awake, 245k with 2).
      size_t wake = std::min(n, workers_.size());
      if (cpu_bound) wake = std::min(wake, awake_ < cpus_ ? cpus_ - awake_ : size_t{0});
      for (size_t i = 0; i < wake; ++i) cv_.notify_one();
      return;
    }
  }
  for (size_t i = 0; i < n; ++i) drop(pieces[i]);  // submitted after shutdown
}

void ThreadPool::drop(Piece* p) {
  if (p->copy_out && copy_sink_) {
    copy_sink_(p);  // the bytes have landed: finishing costs one copy, and frees the arena
    return;
  }
  stats_.cancelled++;
  p->batch->complete(*p, p->done, ECANCELED);
}

void ThreadPool::worker() {
  void* mem = nullptr;
  if (posix_memalign(&mem, align_, bounce_bytes_) != 0) mem = nullptr;
  auto* bounce = static_cast<uint8_t*>(mem);
  bool batch = false;
  for (;;) {
    Piece* p;
    {
      std::unique_lock<std::mutex> g(mu_);
      if (!stopping_ && queue_.empty()) {
        --awake_;
        cv_.wait(g, [this] { return stopping_ || !queue_.empty(); });
        ++awake_;
      }
      if (stopping_) break;
      p = queue_.front();
      queue_.pop_front();
    }
    if (!batch && batch_scheduling_.load(std::memory_order_relaxed)) {
      struct sched_param none = {};
      (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &none);
      batch = true;
    }
    if (p->copy_out && copy_sink_) {
      copy_sink_(p);
      continue;
    }
    int err = 0;
    uint64_t got = p->done;
    if (p->mapped) {
      p->mapped = false;
      if (mapped_read(*p, stats_, &err)) {
        if (err) stats_.errors++;
        p->batch->complete(*p, p->done, err);
        continue;
      }
      // The file cannot be mapped: the piece runs in its mode.
    }
    if (p->nowait_probe && miss_sink_) {
      p->nowait_probe = false;
      if (!nowait_read(*p, stats_, &err)) {
        miss_sink_(p);  // the rest from the device, through the submitter (io_uring)
        continue;
      }
      got = p->done;
    } else if (bounce) {
      got = run_piece_sync(*p, align_, bounce_bytes_, bounce, stats_, &err);
    } else {
      err = ENOMEM;
    }
    if (err) stats_.errors++;
    p->batch->complete(*p, got, err);
  }
  std::free(mem);
}

void ThreadPool::shutdown() {
  std::deque<Piece*> left;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
  {
    std::lock_guard<std::mutex> g(mu_);
    left.swap(queue_);
  }
  for (Piece* p : left) drop(p);
}

// ---------------------------------------------------------------- engine

Engine::Engine(const Config& cfg) : cfg_(cfg), owner_pid_(::getpid()) {
  if (cfg_.align == 0 || (cfg_.align & (cfg_.align - 1)) != 0 || cfg_.align < 512)
    throw std::invalid_argument("align must be a power of two of at least 512 bytes");
  if (cfg_.split_bytes == 0 || cfg_.split_bytes % cfg_.align != 0 || cfg_.split_bytes > (1ull << 30))
    throw std::invalid_argument("split_bytes must be a multiple of align and at most 1 GiB");
  if (cfg_.bounce_bytes < 2 * cfg_.align || cfg_.bounce_bytes % cfg_.align != 0)
    throw std::invalid_argument("bounce_bytes must be a multiple of align and at least 2*align");
  if (cfg_.queue_depth == 0 || cfg_.queue_depth > 4096)
    throw std::invalid_argument("queue_depth must be between 1 and 4096");
  if (cfg_.threads == 0 || cfg_.threads > 1024)
    throw std::invalid_argument("threads must be between 1 and 1024");
  if (cfg_.backend != "auto" && cfg_.backend != "io_uring" && cfg_.backend != "threads")
    throw std::invalid_argument("backend must be auto, io_uring or threads");
  pool_ = std::make_unique<ThreadPool>(cfg_.threads, cfg_.align, cfg_.bounce_bytes, stats_);
  populator_ = std::make_shared<Populator>(stats_);
  if (cfg_.backend != "threads") {
    UringProbe probe = probe_uring();
    if (probe.permitted) {
      uring_ = make_uring(cfg_.queue_depth, *pool_, stats_, cfg_.align, cfg_.split_bytes, &backend_reason_);
    } else {
      backend_reason_ = probe.reason;
    }
    if (!uring_ && cfg_.backend == "io_uring") {
      pool_->shutdown();
      throw std::runtime_error("io_uring unavailable: " + backend_reason_);
    }
  } else {
    backend_reason_ = "threads requested";
  }
  backend_ = uring_ ? "io_uring" : "threads";
}

Engine::~Engine() { shutdown(); }

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14
#endif

void Populator::push(const Batch& b) {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (stopping_ || unsupported_) return;
  }
  std::vector<Range> ranges;
  ranges.reserve(b.reqs.size());
  const FileEntry* last = nullptr;
  std::shared_ptr<const FileMapping> m;
  for (const auto& r : b.reqs) {
    const uint64_t got = r.valid.load(std::memory_order_relaxed);
    if (r.op != OP_READ || r.err.load(std::memory_order_relaxed) != 0 || got == 0 || !r.file || r.file->writable) continue;
    if (r.file.get() != last || !m || m->len < r.offset + got) {
      m = r.file->mapping(r.offset + got);  // made once per file (an mmap), then a lookup
      last = r.file.get();
    }
    if (!m || m->len < r.offset + got) {
      stats_.populate_skipped += got;  // cannot be mapped, or shrank since it was read
      continue;
    }
    ranges.push_back(Range{m, r.offset, got});
  }
  std::lock_guard<std::mutex> g(mu_);
  if (stopping_) return;
  for (auto& r : ranges) {
    if (queue_.size() >= kMaxQueued) {
      stats_.populate_skipped += r.length;
      continue;
    }
    queue_.push_back(std::move(r));
  }
  if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
  cv_.notify_one();
}

void Populator::run() {
  struct sched_param none = {};
  (void)pthread_setschedparam(pthread_self(), SCHED_IDLE, &none);  // only the CPU nobody else wants
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::unique_lock<std::mutex> g(mu_);
  for (;;) {
    cv_.wait(g, [this] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    Range r = std::move(queue_.front());
    queue_.pop_front();
    g.unlock();
    bool refused = false;
    if (auto m = r.map.lock()) {
      // The whole pages the range touches: a partly read page is resident
      // whole (a read brings in whole pages).
      const uint64_t end = r.offset + r.length;
      const uint64_t a = r.offset / page * page, b = std::min((end + page - 1) / page * page, m->len);
      if (::madvise(const_cast<uint8_t*>(m->addr) + a, b - a, MADV_POPULATE_READ) == 0) {
        stats_.populated_bytes += b - a;
      } else {
        refused = errno == EINVAL;  // a kernel without MADV_POPULATE_READ
        stats_.populate_skipped += r.length;
      }
    } else {
      stats_.populate_skipped += r.length;  // released meanwhile
    }
    g.lock();
    if (refused) {
      unsupported_ = true;
      for (const auto& q : queue_) stats_.populate_skipped += q.length;
      queue_.clear();
    }
  }
}

void Populator::shutdown() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stopping_ = true;
    queue_.clear();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();  // its thread holds no batch, so never the last reference
}

// Whether submit() probes the page cache inline: AUTO-mode reads of at most
// kNowaitHandoffBytes in all (larger batches would hold the caller while the
// engine could be copying on several threads).
static constexpr size_t kInlineRequests = 64;  // each is one preadv2 on the caller's thread

static bool inline_probe(const Batch& batch, uint8_t mode) {
  if (mode == MODE_DIRECT || batch.reqs.size() > kInlineRequests) return false;
  uint64_t total = 0;
  for (const auto& r : batch.reqs) {
    if (r.op != OP_READ) return false;
    if (r.err == 0) total += r.length;
    if (total > kNowaitHandoffBytes) return false;
  }
  return true;
}

std::shared_ptr<Batch> Engine::submit(std::shared_ptr<Batch> batch, uint8_t mode) {
  if (stopped_) throw std::runtime_error("engine is shut down");
  bool mapped = (mode & MODE_MAPPED) != 0;
  const bool stream = mapped && (mode & MODE_STREAM) != 0;
  bool populate = !mapped && (mode & MODE_POPULATE) != 0;
  mode = static_cast<uint8_t>(mode & ~(MODE_MAPPED | MODE_STREAM | MODE_POPULATE));
  if (mode == MODE_DIRECT) mapped = populate = false;  // O_DIRECT leaves the page cache alone
  if (::getpid() != owner_pid_)
    throw std::runtime_error("engine was created in another process (before a fork); create a new one here");
  size_t npieces = 0;
  for (auto& r : batch->reqs) {
    r.valid = r.length;
    if (r.length == 0) continue;
    bool bad = r.offset > static_cast<uint64_t>(INT64_MAX) || r.length > static_cast<uint64_t>(INT64_MAX) - r.offset;
    if (!bad && (r.addr == 0 || r.addr > UINTPTR_MAX - r.length)) bad = true;
    if (!r.file) {
      r.err = EBADF;
    } else if (bad) {
      r.err = EINVAL;
    } else if (r.op == OP_WRITE && !r.file->writable) {
      r.err = EBADF;
    }
    if (r.err) {
      r.err_offset = r.offset;
      r.valid = 0;
      stats_.errors++;
      continue;
    }
    npieces += (r.length + cfg_.split_bytes - 1) / cfg_.split_bytes;
  }
  batch->pieces.resize(npieces);
  size_t k = 0;
  for (uint32_t i = 0; i < batch->reqs.size(); ++i) {
    auto& r = batch->reqs[i];
    if (r.length == 0 || r.err) continue;
    r.pieces_left = static_cast<uint32_t>((r.length + cfg_.split_bytes - 1) / cfg_.split_bytes);
    r.piece_bytes = cfg_.split_bytes;
    for (uint64_t rel = 0; rel < r.length; rel += cfg_.split_bytes) {
      Piece& p = batch->pieces[k++];
      p.batch = batch.get();
      p.req = i;
      p.rel = rel;
      p.len = std::min(cfg_.split_bytes, r.length - rel);
      p.mode = mode;
      p.mapped = mapped && r.op == OP_READ && !r.file->writable;
      p.stream = stream;
    }
  }
  stats_.requests += batch->reqs.size();
  stats_.pieces += npieces;
  if (npieces == 0) {
    std::lock_guard<std::mutex> g(batch->mu);
    batch->finished = true;
    return batch;
  }
  if (populate) batch->populate = populator_;
  batch->left = npieces;
  batch->self = batch;
  std::vector<Piece*> ptrs;
  ptrs.reserve(npieces);
  bool has_reads = false, has_writes = false;
  for (const auto& r : batch->reqs) (r.op == OP_READ ? has_reads : has_writes) = true;
  if (mapped && !has_writes) {
    // The guard first among SIGBUS handlers again if another was installed
    // since (faulthandler.enable() after the mapping was made): one query.
    install_sigbus_guard();
    // Copies out of mappings: a small batch here, on the calling thread (the
    // GIL is released; no wake-up of another thread), a larger one on the
    // pool's threads, spread over the cores. A piece whose file cannot be
    // mapped runs in the batch's mode (on the pool).
    if (inline_probe(*batch, mode)) {
      for (auto& p : batch->pieces) {
        int err = 0;
        p.mapped = false;
        if (mapped_read(p, stats_, &err)) {
          if (err) stats_.errors++;
          batch->complete(p, p.done, err);  // may finish (and release) the batch's self-reference
        } else {
          ptrs.push_back(&p);
        }
      }
    } else {
      for (auto& p : batch->pieces) ptrs.push_back(&p);
    }
    // A data set's batches (stream) keep no more workers awake than there
    // are CPUs; cache hits into one reused buffer measured faster with every
    // worker awake (bench_cache 0.85 -> 1.1x plain at 4 MiB, 2 CPUs).
    if (!ptrs.empty()) pool_->submit(ptrs.data(), ptrs.size(), /*cpu_bound=*/stream);
    return batch;
  }
  if (inline_probe(*batch, mode)) {
    // Small reads: try the page cache here, on the calling thread (the GIL is
    // released): a hit completes without waking the engine's threads (64 KiB:
    // ~3 us instead of ~100 us through the queue). A miss goes on as usual,
    // its probe done (AUTO: from the device; BUFFERED, or a file system
    // without RWF_NOWAIT: a buffered read, which fills the page cache).
    for (auto& p : batch->pieces) {
      int err = 0;
      if (nowait_read(p, stats_, &err)) {
        if (err) stats_.errors++;
        batch->complete(p, p.done, err);  // may finish (and release) the batch's self-reference
      }
      else
        ptrs.push_back(&p);
    }
  } else if (uring_ && mode != MODE_DIRECT && has_reads && !has_writes) {
    // Larger reads that may be cached: the thread pool tries the page cache
    // (RWF_NOWAIT), so the copies of a hot batch spread over every core
    // instead of falling to the ring's one submitting thread; what misses
    // goes to the ring (AUTO: O_DIRECT; BUFFERED: a buffered read).
    for (auto& p : batch->pieces) {
      p.nowait_probe = true;
      ptrs.push_back(&p);
    }
    pool_->submit(ptrs.data(), ptrs.size());
    return batch;
  } else {
    for (auto& p : batch->pieces) ptrs.push_back(&p);
  }
  if (ptrs.empty()) return batch;
  if (uring_)
    uring_->submit(ptrs.data(), ptrs.size());
  else
    pool_->submit(ptrs.data(), ptrs.size());
  return batch;
}

// In a forked child the ring's reaper thread does not exist: a registration
// change would wait for it forever (a staging pool dropped in a torch
// DataLoader worker). There the engine's buffers stay as they are.
bool Engine::register_buffer(uintptr_t addr, uint64_t len) {
  if (::getpid() != owner_pid_) return false;
  return uring_ ? uring_->register_buffer(addr, len) : false;
}

void Engine::unregister_buffer(uintptr_t addr) {
  if (::getpid() != owner_pid_) return;
  if (uring_) uring_->unregister_buffer(addr);
}

void Engine::shutdown() {
  if (stopped_.exchange(true)) return;
  if (::getpid() != owner_pid_) {
    // A forked child: the worker and reaper threads exist only in the
    // parent, and the ring's queues are memory shared with it. Joining would
    // throw and submitting a wake-up would write into the parent's ring, so
    // the child leaves both alone (their memory dies with the process).
    (void)uring_.release();
    (void)pool_.release();
    (void)new std::shared_ptr<Populator>(std::move(populator_));  // its thread too: never joined here
    return;
  }
  if (uring_) uring_->shutdown();  // may still hand pieces to the pool
  pool_->shutdown();
  populator_->shutdown();
}

}  // namespace sc
