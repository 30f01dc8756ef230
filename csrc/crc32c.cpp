#include "crc32c.hpp"

#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace sc {

namespace {

constexpr uint32_t kPoly = 0x82f63b78;  // reflected Castagnoli polynomial

// ---- software: one table, a byte at a time

struct ByteTable {
  uint32_t t[256];
  ByteTable() {
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = c & 1 ? (c >> 1) ^ kPoly : c >> 1;
      t[n] = c;
    }
  }
};

uint32_t crc32c_sw(uint32_t crc, const uint8_t* p, size_t n) {
  static const ByteTable table;
  uint32_t c = ~crc;
  while (n--) c = table.t[(c ^ *p++) & 0xff] ^ (c >> 8);
  return ~c;
}

#if defined(__x86_64__)

// ---- hardware: three streams, combined by the operator that appends
// `len` zero bytes to a crc (a 32x32 matrix over GF(2), as four tables).

uint32_t gf2_times(const uint32_t* mat, uint32_t vec) {
  uint32_t sum = 0;
  while (vec) {
    if (vec & 1) sum ^= *mat;
    vec >>= 1;
    ++mat;
  }
  return sum;
}

void gf2_square(uint32_t* square, const uint32_t* mat) {
  for (int n = 0; n < 32; ++n) square[n] = gf2_times(mat, mat[n]);
}

// The operator appending len zero bytes (len a power of two).
void zeros_op(uint32_t* even, size_t len) {
  uint32_t odd[32];
  odd[0] = kPoly;
  uint32_t row = 1;
  for (int n = 1; n < 32; ++n) {
    odd[n] = row;
    row <<= 1;
  }
  gf2_square(even, odd);  // 2 zero bits
  gf2_square(odd, even);  // 4 zero bits
  do {
    gf2_square(even, odd);
    len >>= 1;
    if (len == 0) return;
    gf2_square(odd, even);
    len >>= 1;
  } while (len);
  std::memcpy(even, odd, sizeof odd);
}

struct ShiftTable {
  uint32_t t[4][256];
  explicit ShiftTable(size_t len) {
    uint32_t op[32];
    zeros_op(op, len);
    for (uint32_t n = 0; n < 256; ++n) {
      t[0][n] = gf2_times(op, n);
      t[1][n] = gf2_times(op, n << 8);
      t[2][n] = gf2_times(op, n << 16);
      t[3][n] = gf2_times(op, n << 24);
    }
  }
  uint32_t shift(uint32_t crc) const {
    return t[0][crc & 0xff] ^ t[1][(crc >> 8) & 0xff] ^ t[2][(crc >> 16) & 0xff] ^ t[3][crc >> 24];
  }
};

constexpr size_t kLong = 8192;
constexpr size_t kShort = 256;

__attribute__((target("sse4.2"))) uint32_t crc32c_hw(uint32_t crc, const uint8_t* next, size_t len) {
  static const ShiftTable long_shift(kLong);
  static const ShiftTable short_shift(kShort);
  uint64_t crc0 = ~crc & 0xffffffffu;
  while (len && (reinterpret_cast<uintptr_t>(next) & 7)) {
    crc0 = _mm_crc32_u8(static_cast<uint32_t>(crc0), *next++);
    --len;
  }
  uint64_t w0, w1, w2;
  while (len >= 3 * kLong) {
    uint64_t crc1 = 0, crc2 = 0;
    const uint8_t* end = next + kLong;
    do {
      std::memcpy(&w0, next, 8);
      std::memcpy(&w1, next + kLong, 8);
      std::memcpy(&w2, next + 2 * kLong, 8);
      crc0 = _mm_crc32_u64(crc0, w0);
      crc1 = _mm_crc32_u64(crc1, w1);
      crc2 = _mm_crc32_u64(crc2, w2);
      next += 8;
    } while (next < end);
    crc0 = long_shift.shift(static_cast<uint32_t>(crc0)) ^ crc1;
    crc0 = long_shift.shift(static_cast<uint32_t>(crc0)) ^ crc2;
    next += 2 * kLong;
    len -= 3 * kLong;
  }
  while (len >= 3 * kShort) {
    uint64_t crc1 = 0, crc2 = 0;
    const uint8_t* end = next + kShort;
    do {
      std::memcpy(&w0, next, 8);
      std::memcpy(&w1, next + kShort, 8);
      std::memcpy(&w2, next + 2 * kShort, 8);
      crc0 = _mm_crc32_u64(crc0, w0);
      crc1 = _mm_crc32_u64(crc1, w1);
      crc2 = _mm_crc32_u64(crc2, w2);
      next += 8;
    } while (next < end);
    crc0 = short_shift.shift(static_cast<uint32_t>(crc0)) ^ crc1;
    crc0 = short_shift.shift(static_cast<uint32_t>(crc0)) ^ crc2;
    next += 2 * kShort;
    len -= 3 * kShort;
  }
  while (len >= 8) {
    std::memcpy(&w0, next, 8);
    crc0 = _mm_crc32_u64(crc0, w0);
    next += 8;
    len -= 8;
  }
  while (len) {
    crc0 = _mm_crc32_u8(static_cast<uint32_t>(crc0), *next++);
    --len;
  }
  return ~static_cast<uint32_t>(crc0);
}

bool have_sse42() {
  static const bool yes = __builtin_cpu_supports("sse4.2");
  return yes;
}

// ---- carry-less multiply folding (AVX-512 VPCLMULQDQ), for long buffers.
//
// The crc32 instruction does at most 8 bytes per cycle per core even in
// three streams; the engine checks every chunk as it lands, right after a
// page-cache copy that itself runs at memory speed, so the check must cost
// a small fraction of the copy. Folding four 64-byte registers with
// carry-less multiplies runs several times faster. Math (GF(2) polynomials
// mod P; a 128-bit lane, loaded little-endian, holds bit t as the
// coefficient of x^(127-t), since crc32c is bit-reflected): the sum of
// lane X and the lane D bits later, X*x^D + Y, is congruent mod P to
// clmul(X.q0, K1) ^ clmul(X.q1, K0) ^ Y with K1 = x^(63+D) mod P and
// K0 = x^(D-1) mod P (each one bit lower than x^(64+D) and x^D, because a
// carry-less product of two 64-bit reflected values lands one bit low).
// The folded lane X is congruent to the whole message, and two crc32
// instructions from a zero register give X*x^32 mod P, which is the crc
// register after the message. The initial register value is XORed into
// the message's first four bytes (the same thing, for a reflected crc).

// x^n mod P, P non-reflected (bit j: the coefficient of x^j), as a 64-bit
// reflected value (coefficient of x^j at bit 63-j), the operand layout above.
uint64_t xpow_reflected(uint64_t n) {
  uint32_t s = 1;
  while (n--) s = (s << 1) ^ ((s >> 31) ? 0x1EDC6F41u : 0u);
  uint64_t k = 0;
  for (int j = 0; j < 32; ++j)
    if ((s >> j) & 1) k |= uint64_t{1} << (63 - j);
  return k;
}

struct FoldConst {
  uint64_t q0, q1;  // multiply a lane's low and high 64 bits
  explicit FoldConst(uint64_t bits) : q0(xpow_reflected(63 + bits)), q1(xpow_reflected(bits - 1)) {}
};

constexpr size_t kFoldBlock = 256;  // bytes folded per loop turn (four zmm registers)
constexpr size_t kFoldMin = 1024;   // shorter buffers: the crc32 instruction

__attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.2")))
__m128i fold128(__m128i x, const FoldConst& k) {
  __m128i kk = _mm_set_epi64x(static_cast<long long>(k.q1), static_cast<long long>(k.q0));
  return _mm_xor_si128(_mm_clmulepi64_si128(x, kk, 0x00), _mm_clmulepi64_si128(x, kk, 0x11));
}

__attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.2")))
__m512i lanes(const FoldConst& k) {  // k in each of the four 128-bit lanes
  return _mm512_broadcast_i32x4(_mm_set_epi64x(static_cast<long long>(k.q1), static_cast<long long>(k.q0)));
}

__attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.2")))
__m512i fold512(__m512i x, __m512i k, __m512i y) {
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11), y, 0x96);
}

// The crc register (not inverted) of four 512-bit fold lanes: folded into
// one, then to 128 bits, then reduced with the crc32 instruction.
__attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.2")))
uint32_t reduce4(__m512i x0, __m512i x1, __m512i x2, __m512i x3) {
  static const FoldConst by64(512), by48(384), by32(256), by16(128);
  const __m512i k64 = lanes(by64);
  x1 = fold512(x0, k64, x1);
  x2 = fold512(x1, k64, x2);
  x3 = fold512(x2, k64, x3);
  __m128i x = _mm512_extracti32x4_epi32(x3, 3);
  x = _mm_xor_si128(x, fold128(_mm512_extracti32x4_epi32(x3, 0), by48));
  x = _mm_xor_si128(x, fold128(_mm512_extracti32x4_epi32(x3, 1), by32));
  x = _mm_xor_si128(x, fold128(_mm512_extracti32x4_epi32(x3, 2), by16));
  uint64_t c = _mm_crc32_u64(0, static_cast<uint64_t>(_mm_cvtsi128_si64(x)));
  c = _mm_crc32_u64(c, static_cast<uint64_t>(_mm_extract_epi64(x, 1)));
  return static_cast<uint32_t>(c);
}

// The crc register (not inverted) after `reg` and len bytes (len a positive
// multiple of kFoldBlock).
__attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.2")))
uint32_t fold_blocks(uint32_t reg, const uint8_t* p, size_t len) {
  static const FoldConst by256(2048);
  __m512i x0 = _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_castsi128_si512(_mm_cvtsi32_si128(static_cast<int>(reg))));
  __m512i x1 = _mm512_loadu_si512(p + 64);
  __m512i x2 = _mm512_loadu_si512(p + 128);
  __m512i x3 = _mm512_loadu_si512(p + 192);
  const __m512i k256 = lanes(by256);
  for (p += kFoldBlock, len -= kFoldBlock; len >= kFoldBlock; p += kFoldBlock, len -= kFoldBlock) {
    x0 = fold512(x0, k256, _mm512_loadu_si512(p));
    x1 = fold512(x1, k256, _mm512_loadu_si512(p + 64));
    x2 = fold512(x2, k256, _mm512_loadu_si512(p + 128));
    x3 = fold512(x3, k256, _mm512_loadu_si512(p + 192));
  }
  return reduce4(x0, x1, x2, x3);
}

// fold_blocks that also stores each 64-byte block it loads at d: a copy
// with its crc in one pass (the carry-less multiplies overlap the loads of a
// copy out of memory, so the check costs little beside the copy).
template <bool kStream>
__attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.2"))) inline void put64(uint8_t* d, __m512i v) {
  if (kStream)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d), v);
  else
    _mm512_storeu_si512(d, v);
}

template <bool kStream>
__attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.2")))
uint32_t fold_copy_blocks(uint32_t reg, uint8_t* d, const uint8_t* p, size_t len) {
  static const FoldConst by256(2048);
  __m512i y0 = _mm512_loadu_si512(p), y1 = _mm512_loadu_si512(p + 64);
  __m512i y2 = _mm512_loadu_si512(p + 128), y3 = _mm512_loadu_si512(p + 192);
  put64<kStream>(d, y0);
  put64<kStream>(d + 64, y1);
  put64<kStream>(d + 128, y2);
  put64<kStream>(d + 192, y3);
  __m512i x0 = _mm512_xor_si512(y0, _mm512_castsi128_si512(_mm_cvtsi32_si128(static_cast<int>(reg))));
  __m512i x1 = y1, x2 = y2, x3 = y3;
  const __m512i k256 = lanes(by256);
  for (p += kFoldBlock, d += kFoldBlock, len -= kFoldBlock; len >= kFoldBlock;
       p += kFoldBlock, d += kFoldBlock, len -= kFoldBlock) {
    y0 = _mm512_loadu_si512(p);
    y1 = _mm512_loadu_si512(p + 64);
    y2 = _mm512_loadu_si512(p + 128);
    y3 = _mm512_loadu_si512(p + 192);
    put64<kStream>(d, y0);
    put64<kStream>(d + 64, y1);
    put64<kStream>(d + 128, y2);
    put64<kStream>(d + 192, y3);
    x0 = fold512(x0, k256, y0);
    x1 = fold512(x1, k256, y1);
    x2 = fold512(x2, k256, y2);
    x3 = fold512(x3, k256, y3);
  }
  return reduce4(x0, x1, x2, x3);
}

bool have_fold() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("vpclmulqdq") &&
                          __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.2");
  return yes;
}

#endif

}  // namespace

uint32_t crc32c(uint32_t crc, const void* data, size_t n) {
  auto* p = static_cast<const uint8_t*>(data);
#if defined(__x86_64__)
  if (n >= kFoldMin && have_fold()) {
    size_t bulk = n - n % kFoldBlock;
    uint32_t reg = fold_blocks(~crc, p, bulk);
    return crc32c_hw(~reg, p + bulk, n - bulk);  // the rest from that register
  }
  if (have_sse42()) return crc32c_hw(crc, p, n);
#endif
  return crc32c_sw(crc, p, n);
}

uint32_t crc32c_copy(uint32_t crc, void* dst, const void* src, size_t n, bool stream) {
  auto* d = static_cast<uint8_t*>(dst);
  auto* p = static_cast<const uint8_t*>(src);
#if defined(__x86_64__)
  if (n >= kFoldMin && have_fold()) {
    size_t bulk = n - n % kFoldBlock;
    // Streaming stores (asked for, and the destination 64-byte aligned): its
    // lines are not read before they are written (the caller fences at its end).
    uint32_t reg = stream && reinterpret_cast<uintptr_t>(d) % 64 == 0 ? fold_copy_blocks<true>(~crc, d, p, bulk)
                                                            : fold_copy_blocks<false>(~crc, d, p, bulk);
    std::memcpy(d + bulk, p + bulk, n - bulk);
    return crc32c_hw(~reg, d + bulk, n - bulk);
  }
#endif
  std::memcpy(d, p, n);
  return crc32c(crc, d, n);
}

bool crc32c_hardware() {
#if defined(__x86_64__)
  return have_sse42();
#else
  return false;
#endif
}

}  // namespace sc
