// AES-256-GCM for sealed objects (storecomp.crypto's format, version 2),
// through OpenSSL's EVP interface loaded at run time: the build needs no
// OpenSSL headers, and where libcrypto.so.3 cannot be loaded the Python
// layer keeps its `cryptography` path (aead_status() says why).
//
// An AeadKey is one sealed object's data key with what its segments need
// (nonce base, associated-data prefix, segment count and size). Each thread
// keeps one EVP context per key it has used (a few, LRU), keyed once: a
// segment then costs one IV set, the AAD, the data and the tag check.
//
// The engine hook: a read request may carry an AeadRequest; the engine then
// opens, in place, each whole segment of what the request read as its piece
// lands (a segment that spans pieces: when the request's last piece lands),
// on the thread that completed the piece. A segment whose tag fails is
// zeroed and its index recorded; bytes of a short or failed read are left as
// they landed (the caller zeroes the ranges of any call that did not succeed).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sc {

struct Request;
struct Piece;

struct AeadStatus {
  bool available = false;
  std::string reason;   // why not, when not available
  std::string version;  // OpenSSL's version text, when loaded
};

// Loads libcrypto once (thread-safe) and reports whether AES-256-GCM is usable.
const AeadStatus& aead_status();

// ceil(a / b) without the overflow of (a + b - 1) / b (b > 0).
inline uint64_t ceil_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

// How many keyed EVP contexts all threads hold (each AeadKey's go when it does).
size_t aead_cached_contexts();

class AeadKey {
 public:
  static constexpr size_t kKeyBytes = 32, kNonceBytes = 12, kTagBytes = 16;
  // Throws std::runtime_error when libcrypto is not available.
  AeadKey(const uint8_t* key, const uint8_t* nonce_base, std::string aad_prefix, uint64_t segments,
          uint64_t segment_bytes);
  ~AeadKey();
  AeadKey(const AeadKey&) = delete;
  AeadKey& operator=(const AeadKey&) = delete;

  // Decrypts segment i (n bytes at data, in place) and checks its tag; true
  // when authentic. On failure the n bytes are zeroed.
  bool open(uint64_t i, uint8_t* data, uint64_t n, const uint8_t* tag) const;
  // The same from in to out (n bytes each); out is zeroed on failure.
  bool open(uint64_t i, const uint8_t* in, uint8_t* out, uint64_t n, const uint8_t* tag) const;
  // Encrypts segment i from in to out (n bytes; may be the same) and writes its 16-byte tag.
  void seal(uint64_t i, const uint8_t* in, uint8_t* out, uint64_t n, uint8_t* tag) const;

  uint64_t segments() const { return segments_; }
  uint64_t segment_bytes() const { return segment_bytes_; }

 private:
  bool run(int enc, uint64_t i, const uint8_t* in, uint8_t* out, uint64_t n, uint8_t* tag) const;
  uint64_t id_;  // distinguishes keys in the per-thread context caches (never reused)
  uint8_t key_[kKeyBytes];
  uint8_t salt_[4];
  uint64_t base_;
  std::string aad_prefix_;
  uint64_t segments_, segment_bytes_;
};

// What a read request decrypts: segments first_segment.. of `key`, the
// request's bytes starting at the first one's start; tags[16 k] is the tag
// of segment first_segment + k. failed: the first segment (object index)
// whose tag failed, or -1; opened: how many segments opened (fail closed:
// a segment never opened, for whatever reason, counts as failed).
struct AeadRequest {
  std::shared_ptr<const AeadKey> key;
  uint64_t first_segment = 0;
  const uint8_t* tags = nullptr;
  std::atomic<int64_t>* failed = nullptr;
  std::atomic<uint64_t>* opened = nullptr;
};

// The batch's decryption state (held by Batch::aead_state).
struct AeadBatch {
  std::vector<AeadRequest> reqs;
  std::vector<uint8_t> tags;
  std::vector<std::atomic<int64_t>> failed;
  std::vector<std::atomic<uint64_t>> opened;
  explicit AeadBatch(size_t n) : reqs(n), failed(n), opened(n) {
    for (auto& f : failed) f.store(-1);
    for (auto& o : opened) o.store(0);
  }
  // Per request: the first segment that failed or was never opened (the
  // request's first when unknown), -1 when all of them opened.
  int64_t verdict(size_t i, uint64_t length) const;
};

// Opens the segments piece p completes (see aead_piece) now, on this thread.
void aead_piece(Request& r, const Piece& p, uint64_t got, int err);

// Called by Batch::complete for a request with an AeadRequest, instead of the
// crc32c checks (a request has one or the other): aead_piece, then the
// batch's piece_done(), on one of the AEAD threads (one per core), so that
// the AES work never holds the io_uring completion thread and spreads over
// the cores. In a forked child (no such threads), on this thread.
void aead_defer(Request& r, Piece& p, uint64_t got, int err);

}  // namespace sc
