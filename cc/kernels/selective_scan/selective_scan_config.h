// The kernel geometries the ops instantiate, and the checks shared by the forward and backward
// launchers. Not yet run on a GPU.
#pragma once

#include "cc/kernels/selective_scan/selective_scan_layout.h"

namespace visionssm::selective_scan {

// Geometry<items per lane, warps per CTA, states per pass>; one chunk length for all of them so
// the backward restarts from the forward's checkpoints.
//   d_state = 1 (VMamba): the state is a register, no state loop.
//   d_state 2..256 (Vim, N = 16; vanilla VMamba, N = 16; Mamba N = 64..): kNTile states per pass
//   in registers, carries in shared memory.
using FwdN1 = Geometry<8, 4, 1>;
using FwdTiled = Geometry<8, 4, 2>;
using BwdN1 = Geometry<8, 8, 1>;  // 8 channels per CTA: dB/dC slices = channels / 8
using BwdTiled = Geometry<8, 4, 2>;
constexpr int64_t kChunkLen = 256;
static_assert(FwdN1::kChunk == kChunkLen && FwdTiled::kChunk == kChunkLen && BwdN1::kChunk == kChunkLen &&
                  BwdTiled::kChunk == kChunkLen,
              "forward and backward must chunk the sequence identically");

}  // namespace visionssm::selective_scan
