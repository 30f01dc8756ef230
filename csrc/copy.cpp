#include "copy.hpp"

#include <setjmp.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "crc32c.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SC_X86 1
#endif

namespace sc {
namespace {

constexpr uint64_t kStreamMin = 4ull << 20;   // auto: stream batches of at least this
constexpr uint64_t kPerThreadMin = 1ull << 20;  // bytes per extra thread

#ifdef SC_X86
// 128 bytes per round through four AVX2 registers: streaming stores
// (kStream; d 32-byte aligned) or plain unaligned ones (which cost the same
// as aligned stores on an aligned address); the tail with memcpy.
template <bool kStream>
__attribute__((target("avx2"))) void avx2_copy(char* d, const char* s, size_t n) {
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    __m256i v[4];
    for (int k = 0; k < 4; ++k) v[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 32 * k));
    for (int k = 0; k < 4; ++k) {
      auto* at = reinterpret_cast<__m256i*>(d + i + 32 * k);
      if (kStream)
        _mm256_stream_si256(at, v[k]);
      else
        _mm256_storeu_si256(at, v[k]);
    }
  }
  if (i < n) std::memcpy(d + i, s + i, n - i);
}

void stream_sse2(char* d, const char* s, size_t n) {
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16));
    __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 32));
    __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 48), e);
  }
  if (i < n) std::memcpy(d + i, s + i, n - i);
}

const bool kHaveAvx2 = __builtin_cpu_supports("avx2");
#endif

// A copy between addresses of any alignment, best with a 64-byte aligned
// destination: glibc's memcpy (rep movsb here) runs at a third to a quarter
// of its speed when source and destination are not mutually aligned (AMD
// Zen 4, 8-64 KiB), a vector loop does not.
void vector_copy(uint8_t* d, const uint8_t* s, size_t n) {
#ifdef SC_X86
  if (kHaveAvx2) {
    avx2_copy<false>(reinterpret_cast<char*>(d), reinterpret_cast<const char*>(s), n);
    return;
  }
#endif
  std::memcpy(d, s, n);
}

// Streaming copy: plain stores up to the first 32-byte boundary of the
// destination (stream stores need it), then streaming. Callers fence.
void stream_copy(char* d, const char* s, size_t n) {
#ifdef SC_X86
  size_t head = (32 - reinterpret_cast<uintptr_t>(d) % 32) % 32;
  if (n < head + 64) {
    std::memcpy(d, s, n);
    return;
  }
  std::memcpy(d, s, head);
  if (kHaveAvx2)
    avx2_copy<true>(d + head, s + head, n - head);
  else
    stream_sse2(d + head, s + head, n - head);
#else
  std::memcpy(d, s, n);
#endif
}

// How many concurrent address streams one end of an op touches when the
// inner loop has `n` steps of `inner` bytes and the outer loop steps
// `outer` bytes: 1 when the inner loop is contiguous; n interleaved streams
// that each advance densely when the outer step is one row; otherwise a
// sparse walk that leaves gaps for later passes to fill (the slow case:
// strided 256-byte reads run at half the speed of 8 interleaved streams).
int64_t streams(int64_t n, int64_t inner, int64_t outer, int64_t len) {
  if (n <= 1 || inner == len) return 1;
  if (outer == len) return n;
  return INT64_MAX / 2;
}

int64_t order_cost(int64_t n, int64_t d_inner, int64_t s_inner, int64_t d_outer, int64_t s_outer, int64_t len) {
  return std::max(streams(n, d_inner, d_outer, len), streams(n, s_inner, s_outer, len));
}

// One op, its loops ordered: the order whose ends touch fewer streams (a
// transposing copy [heads, tokens, d] <-> [tokens, heads, d] goes token by
// token: one dense stream on the token-major end, one per head on the
// other), ties broken so the source is read in address order. A single
// outer step becomes the inner loop, so the outer range (which threads
// split) has the rows.
struct CopyOp {
  char* dst;
  const char* src;
  int64_t outer, d_outer, s_outer, rows, d_row, s_row, len;
};

CopyOp normalized(const int64_t* o, const CopyRegion* dst, const CopyRegion* src) {
  CopyOp op{reinterpret_cast<char*>(dst[o[0]].addr) + o[1], reinterpret_cast<const char*>(src[o[2]].addr) + o[3],
        o[4], o[5], o[6], o[7], o[8], o[9], o[10]};
  const int64_t keep = order_cost(op.rows, op.d_row, op.s_row, op.d_outer, op.s_outer, op.len);
  const int64_t swap = order_cost(op.outer, op.d_outer, op.s_outer, op.d_row, op.s_row, op.len);
  if (op.outer == 1 || swap < keep || (swap == keep && op.rows > 1 && op.s_outer < op.s_row)) {
    std::swap(op.outer, op.rows);
    std::swap(op.d_outer, op.d_row);
    std::swap(op.s_outer, op.s_row);
  }
  return op;
}

struct CopySpan {
  size_t op;
  int64_t o0, o1;  // outer range
};

void run_spans(const CopyOp* ops, const CopySpan* p, size_t np, bool streaming) {
  for (size_t k = 0; k < np; ++k) {
    const CopyOp& op = ops[p[k].op];
    const size_t len = static_cast<size_t>(op.len);
    for (int64_t o = p[k].o0; o < p[k].o1; ++o) {
      char* d = op.dst + o * op.d_outer;
      const char* s = op.src + o * op.s_outer;
      for (int64_t r = 0; r < op.rows; ++r) {
        if (streaming)
          stream_copy(d + r * op.d_row, s + r * op.s_row, len);
        else
          std::memcpy(d + r * op.d_row, s + r * op.s_row, len);
      }
    }
  }
#ifdef SC_X86
  if (streaming) _mm_sfence();  // streamed lines visible before this thread reports done
#endif
}

// off + (outer-1)*os + (rows-1)*rs + len <= size, without overflow.
bool in_bounds(int64_t off, int64_t outer, int64_t os, int64_t rows, int64_t rs, int64_t len, uint64_t size) {
  if (outer == 0 || rows == 0 || len == 0) return true;
  int64_t a, b, end;
  if (__builtin_mul_overflow(outer - 1, os, &a) || __builtin_mul_overflow(rows - 1, rs, &b) ||
      __builtin_add_overflow(off, a, &end) || __builtin_add_overflow(end, b, &end) ||
      __builtin_add_overflow(end, len, &end))
    return false;
  return static_cast<uint64_t>(end) <= size;
}

}  // namespace

void stream_memcpy(void* dst, const void* src, size_t n) {
  stream_copy(static_cast<char*>(dst), static_cast<const char*>(src), n);
#ifdef SC_X86
  _mm_sfence();
#endif
}

// ---------------------------------------------------------------- copies out of file mappings

namespace {

// Per thread: where a SIGBUS inside mapped_copy jumps back to. Trivially
// constructible, so the handler's access needs no TLS initialiser.
struct SigbusGuard {
  sigjmp_buf jump;
  volatile sig_atomic_t active;
};
thread_local SigbusGuard tls_guard;
thread_local int tls_chaining;  // inside the previous handler, on this thread

std::mutex sigbus_mu;
struct sigaction sigbus_prev;  // the handler ours replaced (written under sigbus_mu, before ours is live)

void on_sigbus(int sig, siginfo_t* info, void* ctx) {
  SigbusGuard& g = tls_guard;
  if (g.active) {
    g.active = 0;
    siglongjmp(g.jump, 1);  // SA_NODEFER: SIGBUS is not blocked here, so no mask to restore
  }
  // Not a guarded copy: whoever handled SIGBUS before us, once. Entered again
  // while that runs (faulthandler, enabled after us and then replaced by us
  // again, raises the signal anew to its previous handler, ours), the
  // default action: never a loop of handlers that each return to the fault.
  const struct sigaction& prev = sigbus_prev;
  const bool has_prev = (prev.sa_flags & SA_SIGINFO) ? prev.sa_sigaction != nullptr
                                                     : prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN;
  if (has_prev && tls_chaining == 0) {
    ++tls_chaining;
    if (prev.sa_flags & SA_SIGINFO)
      prev.sa_sigaction(sig, info, ctx);
    else
      prev.sa_handler(sig);
    --tls_chaining;
    return;
  }
  // The default action: a fault repeats when this returns and then kills the
  // process as it would have without us; a signal sent with kill(2) is sent again.
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGBUS, &dfl, nullptr);
  if (info == nullptr || info->si_code <= 0) raise(sig);
}

constexpr uint64_t kCopyBlock = 64 << 10;  // progress is noted per block (the error offset of a fault)

}  // namespace

void install_sigbus_guard() {
  std::lock_guard<std::mutex> g(sigbus_mu);
  struct sigaction cur = {};
  if (sigaction(SIGBUS, nullptr, &cur) != 0) return;
  if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigbus) return;
  sigbus_prev = cur;
  struct sigaction ours = {};
  ours.sa_sigaction = on_sigbus;
  // Not SA_ONSTACK: a fault of a copy is no stack overflow, and the jump back leaves from the
  // copying thread's own stack.
  ours.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART;
  sigemptyset(&ours.sa_mask);
  sigaction(SIGBUS, &ours, nullptr);
}

uint64_t mapped_copy(uint8_t* dst, const uint8_t* src, uint64_t len, uint64_t crc_begin, uint64_t crc_end, uint64_t step,
                     uint32_t* crcs, bool stream, bool* faulted) {
  // Only plain data and volatile progress live across the jump (no objects to destroy).
  volatile uint64_t done = 0;
  SigbusGuard& g = tls_guard;
  *faulted = false;
  if (sigsetjmp(g.jump, 0) != 0) {
    *faulted = true;
#ifdef SC_X86
    if (stream) _mm_sfence();  // what was copied before the fault is ordered like a whole copy
#endif
    return done;
  }
  g.active = 1;
  std::atomic_signal_fence(std::memory_order_seq_cst);  // no load of src moves out of the guard
  if (step == 0 || crc_begin >= crc_end) crc_begin = crc_end = 0;
  // Blocks start on 64-byte boundaries of dst after a short head (a large
  // np.empty starts 16 bytes past a page): plain copies use aligned stores
  // (vector_copy; streaming ones with `stream`: stream_copy), checked bytes
  // are copied and checksummed in one pass (crc32c_copy), chunk by chunk.
  uint64_t at = 0, chunk = 0;
  uint32_t crc = 0;
  while (at < len) {
    uint64_t end = at == 0 ? (64 - reinterpret_cast<uintptr_t>(dst) % 64) % 64 : 0;
    if (end == 0) end = at + kCopyBlock;
    end = std::min(end, len);
    // The block in segments cut at the checked region's ends and at chunk ends.
    for (uint64_t x = at; x < end;) {
      if (x < crc_begin || x >= crc_end) {
        const uint64_t e = x < crc_begin ? std::min(end, crc_begin) : end;
        if (stream)
          stream_copy(reinterpret_cast<char*>(dst + x), reinterpret_cast<const char*>(src + x), e - x);
        else
          vector_copy(dst + x, src + x, e - x);
        x = e;
        continue;
      }
      const uint64_t chunk_end = std::min(crc_begin + (chunk + 1) * step, crc_end);
      const uint64_t e = std::min(end, chunk_end);
      crc = crc32c_copy(crc, dst + x, src + x, e - x, stream);
      x = e;
      if (x == chunk_end) {
        crcs[chunk++] = crc;
        crc = 0;
      }
    }
    at = end;
    done = at;
  }
  std::atomic_signal_fence(std::memory_order_seq_cst);
  g.active = 0;
#ifdef SC_X86
  if (stream) _mm_sfence();  // crc32c_copy's streaming stores are visible before the piece completes
#endif
  return len;
}

// ---------------------------------------------------------------- the copy pool

CopyPool& CopyPool::shared() {
  static std::mutex mu;
  static CopyPool* pool = nullptr;
  std::lock_guard<std::mutex> g(mu);
  // A forked child inherits the parent's pool without its threads (and maybe
  // with its mutex held): it gets a pool of its own; the old one is left as
  // it is, never touched or destroyed.
  if (pool == nullptr || pool->owner_pid_ != ::getpid()) pool = new CopyPool();  // lives until exit: never joined
  return *pool;
}

CopyPool::CopyPool() : owner_pid_(::getpid()) {}

unsigned CopyPool::grow(size_t want) {
  std::lock_guard<std::mutex> g(mu_);
  want = std::min<size_t>(want, kMaxWorkers);
  try {
    for (; workers_ < want; ++workers_) std::thread([this] { worker(); }).detach();
  } catch (const std::system_error&) {
    // No thread to be had: the pool keeps the workers it has.
  }
  return static_cast<unsigned>(workers_);
}

void CopyPool::worker() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [this] { return !queue_.empty(); });
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

void CopyPool::run(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  const unsigned workers = n > 1 ? grow(n - 1) : 0;
  if (workers == 0) {  // no helper thread at all: this thread runs everything
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::mutex done_mu;
  std::condition_variable done_cv;
  size_t left = n - 1;
  {
    std::lock_guard<std::mutex> g(mu_);
    for (size_t i = 1; i < n; ++i)
      queue_.emplace_back([&, i] {
        fn(i);
        std::lock_guard<std::mutex> d(done_mu);
        if (--left == 0) done_cv.notify_one();
      });
  }
  cv_.notify_all();
  fn(0);
  std::unique_lock<std::mutex> lk(done_mu);
  done_cv.wait(lk, [&] { return left == 0; });
}

std::string check_copy_ops(const int64_t* ops, size_t n, const CopyRegion* dst, size_t ndst, const CopyRegion* src,
                           size_t nsrc) {
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const int64_t* o = ops + i * kCopyOpCols;
    const std::string at = "copy op " + std::to_string(i) + ": ";
    for (size_t c = 0; c < kCopyOpCols; ++c)
      if (o[c] < 0) return at + "negative field " + std::to_string(c);
    int64_t bytes;  // the batch's byte count must fit (rows may overlap: strides are not checked against it)
    if (__builtin_mul_overflow(o[4], o[7], &bytes) || __builtin_mul_overflow(bytes, o[10], &bytes) ||
        __builtin_add_overflow(total, bytes, &total))
      return at + "the batch moves more than 2**63 bytes";
    if (static_cast<uint64_t>(o[0]) >= ndst || static_cast<uint64_t>(o[2]) >= nsrc) return at + "no such region";
    if (!in_bounds(o[1], o[4], o[5], o[7], o[8], o[10], dst[o[0]].size)) return at + "destination out of bounds";
    if (!in_bounds(o[3], o[4], o[6], o[7], o[9], o[10], src[o[2]].size)) return at + "source out of bounds";
  }
  return "";
}

void run_copy_ops(const int64_t* raw, size_t n, const CopyRegion* dst, const CopyRegion* src, unsigned threads,
                  int nontemporal) {
  std::vector<CopyOp> ops;
  ops.reserve(n);
  uint64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    ops.push_back(normalized(raw + i * kCopyOpCols, dst, src));
    const CopyOp& op = ops.back();
    total += static_cast<uint64_t>(op.outer) * static_cast<uint64_t>(op.rows) * static_cast<uint64_t>(op.len);
  }
  if (total == 0) return;
  const bool streaming = nontemporal > 0 || (nontemporal < 0 && total >= kStreamMin);
  uint64_t want = threads == 0 ? 1 : threads;
  if (want > total / kPerThreadMin) want = total / kPerThreadMin > 0 ? total / kPerThreadMin : 1;

  // Cut the ops (splitting outer ranges where needed) into `want` runs of about equal bytes.
  std::vector<CopySpan> spans;
  std::vector<size_t> cut{0};
  const uint64_t share = (total + want - 1) / want;
  uint64_t filled = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    const uint64_t per = static_cast<uint64_t>(ops[i].rows) * static_cast<uint64_t>(ops[i].len);
    int64_t o = 0;
    while (per > 0 && o < ops[i].outer) {
      int64_t take = static_cast<int64_t>((share - filled + per - 1) / per);
      if (take > ops[i].outer - o) take = ops[i].outer - o;
      spans.push_back({i, o, o + take});
      o += take;
      filled += static_cast<uint64_t>(take) * per;
      if (filled >= share) {
        cut.push_back(spans.size());
        filled = 0;
      }
    }
  }
  if (cut.back() != spans.size()) cut.push_back(spans.size());

  // Run t copies spans [cut[t], cut[t+1]); run 0 is this thread's.
  CopyPool::shared().run(cut.size() - 1, [&](size_t t) {
    run_spans(ops.data(), spans.data() + cut[t], cut[t + 1] - cut[t], streaming);
  });
}

}  // namespace sc
