// Where a quantized weight's bytes lie in memory: rows (row-major, as quantize_int8 /
// quantize_int4 return them) or tiles, the layout our tensor-core product reads.
//
// Tiles: the matrix [n, row_bytes] (int8: row_bytes = k; int4: k / 2) is cut into tiles of
// 8 rows x 64 bytes (64 int8 inputs, 128 int4 ones: one int4 group), stored one after the
// other, the tiles of row group 0 along k first, then those of row group 1, and so on; a
// tile holds its 8 rows' 64 bytes in row order. One warp of quant_gemm.cu loads 16 bytes
// of each of 8 rows x 4 lanes (the MMA fragment's rows g and its k slots): in tiles, that
// is 512 consecutive bytes, as the float16 GEMV reads, instead of 8 pieces of 64 bytes one
// row apart. A byte keeps its place within 16 (and 64) bytes of its row, so any reader of
// 16 aligned bytes of a row finds them together at tiled_offset.
//
// int4 in tiles also orders the nibbles of each 32-bit word (inputs j..j+7; in rows, input
// j + i is nibble i, low nibble first): the even inputs take nibbles 0-3, the odd ones 4-7
// (int4_tile_nibble). The kernel widens nibbles i and i + 4 of a word into one register
// pair, so in tiles a pair is inputs (j + 2i, j + 2i + 1), as the MMA's fragment takes
// them and as the inputs lie in memory; in rows it is (j + i, j + i + 4), and the inputs
// must be permuted to match (two byte permutes per MMA and input tile).
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define LLAVA_HOST_DEVICE __host__ __device__
#else
#define LLAVA_HOST_DEVICE
#endif

namespace llava {

constexpr int kTileRows = 8;
constexpr int kTileBytes = 64;  // of each row

// Whether a matrix of n rows of row_bytes bytes can be stored in tiles (whole tiles only).
constexpr bool tileable(int64_t n, int64_t row_bytes) {
  return n > 0 && row_bytes > 0 && n % kTileRows == 0 && row_bytes % kTileBytes == 0;
}

// The offset in the tiled layout of byte `byte` of row `row` (row_bytes whole tiles): row
// group row / 8 starts 8 rows in, its tile byte / 64 that many tiles further. Positions are
// ints (as in the kernels), only the offset 64 bits: the tensor-core kernel computes it per
// lane, and with 64-bit divisions its gated int8 form took 66 registers instead of 59, a
// block a multiprocessor fewer.
LLAVA_HOST_DEVICE inline int64_t tiled_offset(int row, int byte, int row_bytes) {
  return static_cast<int64_t>(row / kTileRows) * (kTileRows * row_bytes) +
         static_cast<int64_t>(byte / kTileBytes) * (kTileRows * kTileBytes) +
         (row % kTileRows) * kTileBytes + byte % kTileBytes;
}

// int4 in tiles: the nibble (0-7, low nibble of the word's first byte first) that holds
// input i (0-7) of its 32-bit word.
LLAVA_HOST_DEVICE constexpr int int4_tile_nibble(int i) {
  return i % 2 == 0 ? i / 2 : 4 + i / 2;
}

// The offset of byte `byte` of row `row` in either layout.
LLAVA_HOST_DEVICE inline int64_t quant_offset(bool tiled, int row, int byte, int row_bytes) {
  return tiled ? tiled_offset(row, byte, row_bytes) : static_cast<int64_t>(row) * row_bytes + byte;
}

}  // namespace llava
