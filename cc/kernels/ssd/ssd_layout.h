// Tile geometry of the SSD CUDA kernels, host and device (checked on the host by ssd_index_test.cc
// and replayed by py/ops/tests/ssd_cuda_model.py):
//   * chunks of Q tokens (Q = chunk_size causal, kNonCausalChunk non-causal; the last may be ragged);
//   * per chunk, 64-token row blocks (qblocks = ceil(Q / 64)); GEMM tiles are 64 x 64 with K blocks
//     of 64, zero-filled past every edge;
//   * grid: blockIdx.x = chunk + chunks * (head + heads * batch) (2^31 - 1 allowed), blockIdx.y =
//     the 64 x 64 output tile (row block, column block), at most a few hundred.
#pragma once

#include <cstdint>

#include "cc/kernels/ssd/ssd_params.h"

#if defined(__CUDACC__)
#define SSD_HD __host__ __device__ __forceinline__
#else
#define SSD_HD inline
#endif

namespace visionssm::ssd {

constexpr int kTile = 64;               // CTA tile rows = cols = K block
constexpr int kMmaThreads = 128;        // 4 warps as a 2 x 2 grid of MMA atoms over the tile
constexpr int kMaxChunk = 256;          // causal chunk_size limit (one token per thread in the scans)
constexpr int kNonCausalChunk = 256;    // token block of the non-causal path (its result has no chunks)
constexpr int kScanThreads = 256;       // ssd_chunk_cumsum_kernel / ssd_bwd_dt_kernel
constexpr int kPassThreads = 256;       // state passing: (p, n) elements per CTA

SSD_HD int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Geometry {
  int64_t batch = 0, seqlen = 0, heads = 0, headdim = 0, dstate = 0, groups = 1;
  int64_t Q = 0, chunks = 0, qblocks = 0, pblocks = 0, nblocks = 0, state_blocks = 0;

  static Geometry of(const Params& p) {
    Geometry g;
    g.batch = p.batch, g.seqlen = p.seqlen, g.heads = p.heads, g.headdim = p.headdim;
    g.dstate = p.dstate, g.groups = p.groups;
    g.Q = p.causal ? p.chunk_size : kNonCausalChunk;
    g.chunks = g.seqlen > 0 ? cdiv(g.seqlen, g.Q) : 1;
    g.qblocks = cdiv(g.Q, kTile);
    g.pblocks = cdiv(g.headdim, kTile);
    g.nblocks = cdiv(g.dstate, kTile);
    g.state_blocks = cdiv(g.headdim * g.dstate, kPassThreads);
    return g;
  }
  // Tokens of chunk c (the last one may be ragged).
  SSD_HD int64_t tokens(int64_t c) const {
    const int64_t left = seqlen - c * Q;
    return left < Q ? left : Q;
  }
  SSD_HD int64_t head_group(int64_t h) const { return h / (heads / groups); }
  // Indices into the workspaces and partial-sum buffers (the kernels and ssd_index_test use these).
  // A (batch, head, chunk) row of the per-token buffers (dt', cumsum, extra, dA, dbias):
  SSD_HD int64_t bhc(int64_t b, int64_t h, int64_t c) const { return (b * heads + h) * chunks + c; }
  // First element of the (p, n) state of (batch, chunk, head) in ws_states / ws_dstates:
  SSD_HD int64_t state_offset(int64_t b, int64_t c, int64_t h) const {
    return ((b * chunks + c) * heads + h) * headdim * dstate;
  }
  SSD_HD int64_t xz_index(int64_t bhc_, int64_t row, int64_t pblock) const { return (bhc_ * Q + row) * pblocks + pblock; }
  SSD_HD int64_t dcumsum_index(int64_t bhc_, int64_t row, int64_t nblock) const {
    return (bhc_ * Q + row) * nblocks + nblock;
  }
  SSD_HD int64_t dD_index(int64_t bhc_, int64_t qblock, int64_t f) const { return (bhc_ * qblocks + qblock) * headdim + f; }
  SSD_HD int64_t extra_index(int64_t bhc_, int64_t block) const { return bhc_ * state_blocks + block; }
  // blockIdx.x of (chunk, head, batch) and back.
  SSD_HD int64_t chunk_block_count() const { return batch * heads * chunks; }
};

struct ChunkCoord {
  int64_t chunk, head, batch;
};

SSD_HD ChunkCoord decode_chunk(const Geometry& g, int64_t bx) {
  ChunkCoord c;
  c.chunk = bx % g.chunks;
  const int64_t bh = bx / g.chunks;
  c.head = bh % g.heads;
  c.batch = bh / g.heads;
  return c;
}

// blockIdx.y -> (row block, column block) of a tile grid with `col_blocks` columns.
struct TileCoord {
  int64_t row0, col0;
};
SSD_HD TileCoord decode_tile(int64_t by, int64_t col_blocks) {
  return {(by / col_blocks) * kTile, (by % col_blocks) * kTile};
}

// The 64-token blocks (by first token: begin, begin + 64, ... < end) that meet the causal mask of
// the row block starting at row0: the blocks at or before it (forward scan, dC) and the blocks from
// it up to the chunk's q valid tokens (dx, dB).
struct BlockRange {
  int64_t begin, end;
};
SSD_HD BlockRange blocks_up_to(int64_t row0) { return {0, row0 + 1}; }
SSD_HD BlockRange blocks_from(int64_t row0, int64_t q) { return {row0, q}; }
// Whether the intra-chunk (diagonal) term couples output token i to input token j.
SSD_HD bool causal_pair(int64_t i, int64_t j, int64_t q) { return j <= i && i < q; }

// Float32 workspace and partial-sum sizes (elements), allocated by the caller (py/ops/ssd_cuda.py
// reads them through the module's `workspace` function so both sides agree).
struct Workspace {
  int64_t dt, cumsum, states, extra, xz, dcumsum, dA, dbias, dD;
  static Workspace of(const Geometry& g) {
    Workspace w;
    const int64_t bhc = g.batch * g.heads * g.chunks;
    w.dt = w.cumsum = bhc * g.Q;
    w.states = bhc * g.headdim * g.dstate;  // (b, chunks, h, p, n), also the dstates buffer
    w.extra = bhc * g.state_blocks;
    w.xz = bhc * g.Q * g.pblocks;
    w.dcumsum = bhc * g.Q * g.nblocks;
    w.dA = w.dbias = bhc;
    w.dD = bhc * g.qblocks * g.headdim;
    return w;
  }
};

}  // namespace visionssm::ssd
