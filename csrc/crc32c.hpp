// crc32c (Castagnoli, S3's CRC32C): for buffers of 1 KiB and more, carry-less
// multiply folding over four 512-bit registers (AVX-512 VPCLMULQDQ) where the
// CPU has it (about twice the rate below); else SSE4.2 crc32 instructions in
// three interleaved streams (combined with precomputed shift tables, after
// Mark Adler's crc32c.c); else a table-driven fallback.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sc {

// crc32c of n bytes at data, continuing from crc (0 to start).
uint32_t crc32c(uint32_t crc, const void* data, size_t n);

// Copies n bytes from src to dst and returns the crc32c of them continuing
// from crc, in one pass where the CPU folds with carry-less multiplies (the
// check then costs little beside a copy out of memory); else copy, then check.
// stream: streaming stores where dst is 64-byte aligned (the caller fences).
uint32_t crc32c_copy(uint32_t crc, void* dst, const void* src, size_t n, bool stream = false);

// Whether crc32c() uses the CPU's crc32 instructions.
bool crc32c_hardware();

}  // namespace sc
