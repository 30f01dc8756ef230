#include "crc32c.hpp"

#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
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

#endif

}  // namespace

uint32_t crc32c(uint32_t crc, const void* data, size_t n) {
  auto* p = static_cast<const uint8_t*>(data);
#if defined(__x86_64__)
  if (have_sse42()) return crc32c_hw(crc, p, n);
#endif
  return crc32c_sw(crc, p, n);
}

bool crc32c_hardware() {
#if defined(__x86_64__)
  return have_sse42();
#else
  return false;
#endif
}

}  // namespace sc
