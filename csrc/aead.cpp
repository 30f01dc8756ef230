// AES-256-GCM through libcrypto loaded at run time (see aead.hpp).
#include "aead.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include "engine.hpp"

namespace sc {

namespace {

// The handful of OpenSSL 3 EVP prototypes used here (stable ABI since 1.1).
struct Evp {
  void* (*ctx_new)();
  void (*ctx_free)(void*);
  const void* (*aes_256_gcm)();
  int (*cipher_init_ex)(void*, const void*, void*, const unsigned char*, const unsigned char*, int);
  int (*cipher_update)(void*, unsigned char*, int*, const unsigned char*, int);
  int (*cipher_final_ex)(void*, unsigned char*, int*);
  int (*ctx_ctrl)(void*, int, int, void*);
  unsigned long (*version_num)();
  const char* (*version_text)(int);
};

constexpr int kCtrlGcmGetTag = 0x10;  // EVP_CTRL_AEAD_GET_TAG
constexpr int kCtrlGcmSetTag = 0x11;  // EVP_CTRL_AEAD_SET_TAG
constexpr unsigned long kMinVersion = 0x30000000UL;  // OpenSSL 3.0.0

Evp g_evp;
AeadStatus g_status;
std::once_flag g_once;

void drain_at_exit();  // below, with the AEAD threads

template <typename F>
bool sym(void* lib, const char* name, F* out) {
  *out = reinterpret_cast<F>(::dlsym(lib, name));
  return *out != nullptr;
}

void load() {
  const char* names[] = {"libcrypto.so.3", nullptr};
  void* lib = nullptr;
  std::string errs;
  for (const char** n = names; *n; ++n) {
    lib = ::dlopen(*n, RTLD_NOW | RTLD_LOCAL);
    if (lib) break;
    const char* e = ::dlerror();
    errs += e ? e : *n;
  }
  if (!lib) {
    g_status.reason = "cannot load libcrypto.so.3 (" + errs + ")";
    return;
  }
  Evp e{};
  bool ok = sym(lib, "EVP_CIPHER_CTX_new", &e.ctx_new) && sym(lib, "EVP_CIPHER_CTX_free", &e.ctx_free) &&
            sym(lib, "EVP_aes_256_gcm", &e.aes_256_gcm) && sym(lib, "EVP_CipherInit_ex", &e.cipher_init_ex) &&
            sym(lib, "EVP_CipherUpdate", &e.cipher_update) && sym(lib, "EVP_CipherFinal_ex", &e.cipher_final_ex) &&
            sym(lib, "EVP_CIPHER_CTX_ctrl", &e.ctx_ctrl) && sym(lib, "OpenSSL_version_num", &e.version_num) &&
            sym(lib, "OpenSSL_version", &e.version_text);
  if (!ok) {
    g_status.reason = "libcrypto.so.3 lacks an EVP function this build uses";
    return;  // the library stays loaded: harmless
  }
  unsigned long v = e.version_num();
  const char* text = e.version_text(0);
  g_status.version = text ? text : "";
  if (v < kMinVersion) {
    g_status.reason = "libcrypto reports version " + g_status.version + ", 3.0 or later is needed";
    return;
  }
  if (!e.aes_256_gcm()) {
    g_status.reason = "libcrypto has no AES-256-GCM";
    return;
  }
  // Initialise libcrypto now (a first keying does), so that its exit-time cleanup is
  // registered before ours: atexit runs in reverse, and ours (drain_at_exit) must
  // let the AEAD threads' jobs finish before OpenSSL frees its state.
  if (void* ctx = e.ctx_new()) {
    static const unsigned char zeros[32] = {};
    e.cipher_init_ex(ctx, e.aes_256_gcm(), nullptr, zeros, nullptr, 1);
    e.ctx_free(ctx);
  }
  g_evp = e;
  g_status.available = true;
  std::atexit(drain_at_exit);
}

std::atomic<uint64_t> g_next_key_id{1};

struct ContextCache;

// Every thread's context cache, so that a key going away takes its keyed contexts
// (their AES key schedules) out of every thread, not only out of the one that drops
// it. Never destroyed: threads still running at exit may look at it.
struct CacheRegistry {
  std::mutex mu;
  std::vector<ContextCache*> caches;
};
CacheRegistry& registry() {
  static auto* r = new CacheRegistry();
  return *r;
}

// One thread's EVP contexts, each keyed once with one AeadKey (and direction).
// `mu` is held by its thread while it picks a context and by forget() from
// other threads; a context is used outside it (its key outlives the use).
struct ContextCache {
  static constexpr size_t kSlots = 8;
  struct Slot {
    uint64_t id = 0;
    int enc = 0;
    uint64_t used = 0;
    void* ctx = nullptr;
  } slots[kSlots];
  uint64_t clock = 0;
  std::mutex mu;
  ContextCache() {
    auto& r = registry();
    std::lock_guard<std::mutex> g(r.mu);
    r.caches.push_back(this);
  }
  ~ContextCache() {
    auto& r = registry();
    {
      std::lock_guard<std::mutex> g(r.mu);
      r.caches.erase(std::find(r.caches.begin(), r.caches.end(), this));
    }
    for (auto& s : slots)
      if (s.ctx) g_evp.ctx_free(s.ctx);  // frees and cleanses the key schedule
  }
  // Frees the contexts keyed with key `id` (caller holds mu).
  void forget(uint64_t id) {
    for (auto& s : slots)
      if (s.ctx && s.id == id) {
        g_evp.ctx_free(s.ctx);
        s = Slot{};
      }
  }
  size_t live() {
    std::lock_guard<std::mutex> g(mu);
    size_t n = 0;
    for (auto& s : slots) n += s.ctx != nullptr && s.id != 0;
    return n;
  }
  // The context keyed with `key` (id) for direction enc; nullptr when OpenSSL fails.
  void* get(uint64_t id, int enc, const uint8_t* key) {
    std::lock_guard<std::mutex> g(mu);
    Slot* victim = &slots[0];
    for (auto& s : slots) {
      if (s.ctx && s.id == id && s.enc == enc) {
        s.used = ++clock;
        return s.ctx;
      }
      if (!s.ctx || s.used < victim->used) victim = &s;
    }
    if (!victim->ctx) victim->ctx = g_evp.ctx_new();
    if (!victim->ctx) return nullptr;
    victim->id = 0;
    if (g_evp.cipher_init_ex(victim->ctx, g_evp.aes_256_gcm(), nullptr, key, nullptr, enc) != 1) return nullptr;
    victim->id = id;
    victim->enc = enc;
    victim->used = ++clock;
    return victim->ctx;
  }
};

thread_local ContextCache t_contexts;

inline void put_le64(uint8_t* out, uint64_t v) {
  for (int k = 0; k < 8; ++k) out[k] = static_cast<uint8_t>(v >> (8 * k));
}

}  // namespace

const AeadStatus& aead_status() {
  std::call_once(g_once, load);
  return g_status;
}

AeadKey::AeadKey(const uint8_t* key, const uint8_t* nonce_base, std::string aad_prefix, uint64_t segments,
                 uint64_t segment_bytes)
    : id_(g_next_key_id.fetch_add(1)), aad_prefix_(std::move(aad_prefix)), segments_(segments),
      segment_bytes_(segment_bytes) {
  if (!aead_status().available) throw std::runtime_error("AES-GCM unavailable: " + aead_status().reason);
  if (segment_bytes_ == 0 || segment_bytes_ > (uint64_t{1} << 30))
    throw std::invalid_argument("segment_bytes must be in [1, 2**30]");
  std::memcpy(key_, key, kKeyBytes);
  std::memcpy(salt_, nonce_base, 4);
  base_ = 0;
  for (int k = 7; k >= 0; --k) base_ = (base_ << 8) | nonce_base[4 + k];
}

size_t aead_cached_contexts() {
  auto& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  size_t n = 0;
  for (auto* c : r.caches) n += c->live();
  return n;
}

AeadKey::~AeadKey() {
  {
    auto& r = registry();
    std::lock_guard<std::mutex> g(r.mu);
    for (auto* c : r.caches) {
      std::lock_guard<std::mutex> cg(c->mu);
      c->forget(id_);
    }
  }
  volatile uint8_t* p = key_;
  for (size_t k = 0; k < kKeyBytes; ++k) p[k] = 0;
}

bool AeadKey::run(int enc, uint64_t i, const uint8_t* in, uint8_t* out, uint64_t n, uint8_t* tag) const {
  void* ctx = t_contexts.get(id_, enc, key_);
  if (!ctx) return false;
  uint8_t iv[kNonceBytes];
  std::memcpy(iv, salt_, 4);
  put_le64(iv + 4, base_ ^ i);
  uint8_t tail[16];
  put_le64(tail, i);
  put_le64(tail + 8, segments_);
  int outl = 0;
  if (g_evp.cipher_init_ex(ctx, nullptr, nullptr, nullptr, iv, enc) != 1) return false;
  if (g_evp.cipher_update(ctx, nullptr, &outl, reinterpret_cast<const unsigned char*>(aad_prefix_.data()),
                          static_cast<int>(aad_prefix_.size())) != 1)
    return false;
  if (g_evp.cipher_update(ctx, nullptr, &outl, tail, sizeof tail) != 1) return false;
  constexpr uint64_t kStep = 1u << 30;  // EVP lengths are ints
  for (uint64_t at = 0; at < n; at += kStep) {
    int len = static_cast<int>(std::min(kStep, n - at));
    if (g_evp.cipher_update(ctx, out + at, &outl, in + at, len) != 1) return false;
  }
  if (!enc && g_evp.ctx_ctrl(ctx, kCtrlGcmSetTag, static_cast<int>(kTagBytes), tag) != 1) return false;
  uint8_t none[16];
  if (g_evp.cipher_final_ex(ctx, none, &outl) != 1) return false;  // decrypt: the tag check
  if (enc && g_evp.ctx_ctrl(ctx, kCtrlGcmGetTag, static_cast<int>(kTagBytes), tag) != 1) return false;
  return true;
}

bool AeadKey::open(uint64_t i, uint8_t* data, uint64_t n, const uint8_t* tag) const {
  return open(i, data, data, n, tag);
}

bool AeadKey::open(uint64_t i, const uint8_t* in, uint8_t* out, uint64_t n, const uint8_t* tag) const {
  uint8_t t[kTagBytes];
  std::memcpy(t, tag, kTagBytes);
  if (i < segments_ && run(0, i, in, out, n, t)) return true;
  std::memset(out, 0, n);
  return false;
}

void AeadKey::seal(uint64_t i, const uint8_t* in, uint8_t* out, uint64_t n, uint8_t* tag) const {
  if (!run(1, i, in, out, n, tag)) throw std::runtime_error("OpenSSL AES-GCM encryption failed");
}

// ---------------------------------------------------------------- the engine hook

namespace {

void open_one(Request& r, uint64_t k) {
  AeadRequest& a = *r.aead;
  const uint64_t s = a.key->segment_bytes();
  uint64_t start = k * s, n = std::min(s, r.length - start);
  uint64_t seg = a.first_segment + k;
  if (a.key->open(seg, reinterpret_cast<uint8_t*>(r.addr) + start, n, a.tags + AeadKey::kTagBytes * k)) {
    a.opened->fetch_add(1);
  } else {
    int64_t cur = a.failed->load();
    while ((cur < 0 || static_cast<int64_t>(seg) < cur) && !a.failed->compare_exchange_weak(cur, static_cast<int64_t>(seg))) {
    }
  }
}

bool segment_in_piece(const Request& r, uint64_t s, uint64_t k) {
  uint64_t start = k * s, end = std::min(start + s, r.length);
  return start / r.piece_bytes == (end - 1) / r.piece_bytes;
}

}  // namespace

int64_t AeadBatch::verdict(size_t i, uint64_t length) const {
  int64_t f = failed[i].load();
  if (f >= 0) return f;
  const AeadRequest& a = reqs[i];
  if (!a.key) return -1;
  uint64_t s = a.key->segment_bytes();
  return opened[i].load() == ceil_div(length, s) ? -1 : static_cast<int64_t>(a.first_segment);
}

// As Batch::check_piece: the segments inside piece p now, those across piece
// boundaries once the request's last piece has landed; none after a failure.
void aead_piece(Request& r, const Piece& p, uint64_t got, int err) {
  const uint64_t s = r.aead->key->segment_bytes();
  if (!err) {
    uint64_t read_end = p.rel + got;
    for (uint64_t k = ceil_div(p.rel, s); k * s < read_end; ++k) {
      uint64_t end = std::min(k * s + s, r.length);
      if (end > p.rel + p.len) break;  // runs into the next piece
      if (end > read_end) break;       // not all of it was read (a short read): left for the caller to zero
      open_one(r, k);
    }
  }
  if (r.pieces_left.fetch_sub(1) != 1 || r.err.load() != 0) return;
  if (r.piece_bytes % s == 0) return;  // every piece boundary is a segment boundary: none spans
  uint64_t valid = r.valid.load();
  for (uint64_t k = 0; k * s < valid; ++k) {
    if (segment_in_piece(r, s, k)) continue;
    if (std::min(k * s + s, r.length) > valid) break;
    open_one(r, k);
  }
}

namespace {

// The AEAD threads: one per core, started on first use, never stopped (they
// sleep when idle; the process's exit ends them).
class AeadThreads {
 public:
  AeadThreads() : pid_(::getpid()) {
    unsigned n = std::max(1u, std::thread::hardware_concurrency());
    for (unsigned i = 0; i < n; ++i) {
      try {
        std::thread([this] { run(); }).detach();
        ++started_;
      } catch (const std::system_error&) {
        break;  // no thread to be had (a process or memory limit): jobs run on the caller
      }
    }
  }
  bool post(std::function<void()> job) {
    if (::getpid() != pid_ || started_ == 0) return false;  // a forked child (these threads are the parent's), or none
    {
      std::lock_guard<std::mutex> g(mu_);
      if (stopping_) return false;
      jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
    return true;
  }
  // At exit: take no more jobs and wait (up to 10 s) for the queued and running
  // ones, so none is inside libcrypto when its own exit handler frees it. The
  // threads then sleep until the process ends.
  void drain() {
    std::unique_lock<std::mutex> g(mu_);
    stopping_ = true;
    idle_.wait_for(g, std::chrono::seconds(10), [this] { return jobs_.empty() && running_ == 0; });
  }

 private:
  void run() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> g(mu_);
        cv_.wait(g, [this] { return !jobs_.empty(); });
        job = std::move(jobs_.front());
        jobs_.pop_front();
        ++running_;
      }
      job();
      job = nullptr;
      std::lock_guard<std::mutex> g(mu_);
      if (--running_ == 0 && jobs_.empty()) idle_.notify_all();
    }
  }
  pid_t pid_;
  unsigned started_ = 0;
  unsigned running_ = 0;
  bool stopping_ = false;
  std::mutex mu_;
  std::condition_variable cv_, idle_;
  std::deque<std::function<void()>> jobs_;
};

std::atomic<AeadThreads*> g_threads{nullptr};

AeadThreads& aead_threads() {
  static AeadThreads* t = new AeadThreads();  // never destroyed: detached threads use it until exit
  g_threads.store(t, std::memory_order_release);
  return *t;
}

void drain_at_exit() {
  if (AeadThreads* t = g_threads.load(std::memory_order_acquire)) t->drain();
}

}  // namespace

void aead_defer(Request& r, Piece& p, uint64_t got, int err) {
  Request* rp = &r;
  Piece* pp = &p;
  bool posted = aead_threads().post([rp, pp, got, err] {
    aead_piece(*rp, *pp, got, err);
    pp->batch->piece_done();
  });
  if (!posted) {
    aead_piece(r, p, got, err);
    p.batch->piece_done();
  }
}

}  // namespace sc
