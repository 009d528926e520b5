// Part of selective_scan_cpu.cc (included once, inside its anonymous namespace, after Args and
// scratch): the fast path for N = 1 (VMamba), float32, on CPUs with AVX2 and FMA.
//
// N = 1, float32, no z, channels per group a multiple of 8 (VMamba: 4 directions × 96), on CPUs
// with AVX2 and FMA. Every quantity, not only the recurrence, is vectorized across a tile's 8
// channels (lane r = channel d0 + r): each 8-step block of the 8 rows of δ and u is transposed in
// registers once, the elementwise math and the recurrence run on the transposed vectors, and
// the results are transposed back, so inputs are read once and outputs written once with no
// scratch passes. B_t and C_t are one value per step for the whole tile (one group): broadcasts.
// A block's math is written stage by stage over its 8 steps (8 independent exp/softplus
// evaluations back to back), not step by step: one step's δ → softplus → exp chain is ~100
// cycles of latency, and only the stage order lets the core overlap the 8 steps.
// At N = 1 the time goes into the math itself (e^−|x|, softplus, exp(δA) per element), so the
// path is written with AVX2 intrinsics (vmaxps/vminps clamps, vroundps, vblendvps) in functions
// compiled for AVX2+FMA and picked at run time; other CPUs (and z, or N > 1) take the general path.
// When a graph is built the forward saves softplus(δ) (the `saved` buffer, in place of delta), so
// the backward computes only exp(δA) and σ = 1 − e^−δ. y, du, ddelta and the saved δ are written
// in whole 64-byte lines with streaming stores (LineWriter). set_n1_path(False) (module function)
// turns the path off, for tests and comparisons.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(VSSM_NO_N1_PATH)
#define VSSM_N1_PATH 1
#define VSSM_AVX2 __attribute__((target("avx2,fma")))
#define VSSM_AVX2_INLINE inline __attribute__((always_inline, target("avx2,fma")))

namespace n1 {

using v8 = __m256;

VSSM_AVX2_INLINE v8 set1(float x) { return _mm256_set1_ps(x); }
VSSM_AVX2_INLINE v8 ld(const float* p) { return _mm256_loadu_ps(p); }
VSSM_AVX2_INLINE void st(float* p, v8 v) { _mm256_storeu_ps(p, v); }

// x = k·ln2 + r, |r| <= ln2/2 (ln2 in two parts); returns e^r − 1 = r + r²·P(r) (Cephes expf
// coefficients, as F8::exp: ~1 ulp) and 2^k as a float (k >= −126, i.e. x >= ~−87.3, for it to be
// valid).
VSSM_AVX2_INLINE v8 expm1_reduced(v8 x, v8* two_k) {
  const v8 k = _mm256_round_ps(_mm256_mul_ps(x, set1(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  v8 r = _mm256_fnmadd_ps(k, set1(0.693359375f), x);
  r = _mm256_fnmadd_ps(k, set1(-2.12194440e-4f), r);
  v8 p = _mm256_fmadd_ps(set1(1.9875691500e-4f), r, set1(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, set1(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, set1(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, set1(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, set1(5.0000001201e-1f));
  *two_k = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23));
  return _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
}

// e^x for x <= 0 (NaN propagates); results below e^−86.5 (~2.6e-38) flush to 0 so that no
// subnormal is formed (below ~−87.3 expm1_reduced's 2^k is garbage: masked as well).
VSSM_AVX2_INLINE v8 exp_nonpos(v8 x) {
  v8 two_k;
  const v8 em1 = expm1_reduced(x, &two_k);
  const v8 res = _mm256_mul_ps(_mm256_add_ps(em1, set1(1.0f)), two_k);
  return _mm256_andnot_ps(_mm256_cmp_ps(x, set1(-86.5f), _CMP_LT_OQ), res);  // (NaN: kept)
}

// e^x for any x: e^min(x, 88) (e^88 ≈ 1.65e38; float overflows at 88.72).
VSSM_AVX2_INLINE v8 exp_any(v8 x) { return exp_nonpos(_mm256_min_ps(set1(88.0f), x)); }

template <bool kNonPos>
VSSM_AVX2_INLINE v8 exp(v8 x) {
  if constexpr (kNonPos) return exp_nonpos(x);
  else return exp_any(x);
}

// w = e^−|x|.
VSSM_AVX2_INLINE v8 exp_neg_abs(v8 x) { return exp_nonpos(_mm256_or_ps(x, set1(-0.0f))); }

// e^x − 1 for x <= 0 (NaN propagates; below −87: −1), accurate near 0: 2^k·(e^r − 1) + (2^k − 1),
// where e^r − 1 has no cancellation.
VSSM_AVX2_INLINE v8 expm1_nonpos(v8 x) {
  x = _mm256_max_ps(set1(-87.0f), x);  // (max returns its second operand, x, for NaN)
  v8 two_k;
  const v8 em1 = expm1_reduced(x, &two_k);
  return _mm256_fmadd_ps(two_k, em1, _mm256_sub_ps(two_k, set1(1.0f)));
}

// softplus'(x) = σ(x) from δ = softplus(x) alone: e^δ = 1 + e^x, so σ(x) = e^x/(1 + e^x) = 1 − e^−δ
// (also for x > 20, where δ = x and 1 − e^−x rounds to 1 like σ).
VSSM_AVX2_INLINE v8 sigmoid_from_softplus(v8 dt) {
  const v8 sign = set1(-0.0f);
  return _mm256_xor_ps(expm1_nonpos(_mm256_xor_ps(dt, sign)), sign);
}

// softplus(x) = max(x,0) + log1p(w) as F8::softplus_w (x above 20: x itself).
VSSM_AVX2_INLINE v8 softplus_w(v8 x, v8 w) {
  const v8 s = _mm256_div_ps(w, _mm256_add_ps(w, set1(2.0f)));
  const v8 z = _mm256_mul_ps(s, s);
  const v8 z2 = _mm256_mul_ps(z, z);
  const v8 q = _mm256_fmadd_ps(_mm256_fmadd_ps(set1(0.1407889f), z, set1(0.13982579f)), z2,
                               _mm256_fmadd_ps(set1(0.20012298f), z, set1(0.3333316f)));
  const v8 s2 = _mm256_add_ps(s, s);
  const v8 lp = _mm256_fmadd_ps(_mm256_mul_ps(s2, z), q, s2);
  const v8 res = _mm256_add_ps(_mm256_max_ps(x, _mm256_setzero_ps()), lp);
  return _mm256_blendv_ps(res, x, _mm256_cmp_ps(x, set1(20.0f), _CMP_GT_OQ));
}

// 8×8 transpose in registers: v[r][j] -> v[j][r].
VSSM_AVX2_INLINE void transpose(v8 (&v)[8]) {
  const v8 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
  const v8 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
  const v8 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
  const v8 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
  const v8 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const v8 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const v8 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const v8 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  v[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  v[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  v[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  v[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  v[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  v[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  v[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  v[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// v[j] = (rows 0..7 at step j) for 8 full steps of the rows at p + r·s: each row's two halves
// are loaded into the halves of one register (rows r and r+4), which saves the cross-lane stage.
VSSM_AVX2_INLINE void load_t(const float* p, i64 s, v8 (&v)[8]) {
  v8 a[8];
  for (int r = 0; r < 4; ++r) {
    a[r] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p + r * s)), _mm_loadu_ps(p + (r + 4) * s), 1);
    a[r + 4] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p + r * s + 4)),
                                    _mm_loadu_ps(p + (r + 4) * s + 4), 1);
  }
  // a[r] = (row r t0..3 | row r+4 t0..3), a[r+4] = (row r t4..7 | row r+4 t4..7)
  for (int h = 0; h < 2; ++h) {
    const v8* q = a + 4 * h;
    const v8 t0 = _mm256_unpacklo_ps(q[0], q[1]), t1 = _mm256_unpackhi_ps(q[0], q[1]);
    const v8 t2 = _mm256_unpacklo_ps(q[2], q[3]), t3 = _mm256_unpackhi_ps(q[2], q[3]);
    v[4 * h + 0] = _mm256_shuffle_ps(t0, t2, 0x44);
    v[4 * h + 1] = _mm256_shuffle_ps(t0, t2, 0xEE);
    v[4 * h + 2] = _mm256_shuffle_ps(t1, t3, 0x44);
    v[4 * h + 3] = _mm256_shuffle_ps(t1, t3, 0xEE);
  }
}

// The inverse of load_t (clobbers v).
VSSM_AVX2_INLINE void store_t(float* p, i64 s, v8 (&v)[8]) {
  transpose(v);
  for (int r = 0; r < 8; ++r) st(p + r * s, v[r]);
}

// Lane j of the result = the sum of v[j]'s lanes.
VSSM_AVX2_INLINE v8 hsum_t(const v8 (&v)[8]) {
  const v8 s0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const v8 s1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}

VSSM_AVX2_INLINE v8 gather(const float* p, i64 s) {
  return _mm256_setr_ps(p[0], p[s], p[2 * s], p[3 * s], p[4 * s], p[5 * s], p[6 * s], p[7 * s]);
}

VSSM_AVX2_INLINE void scatter(float* p, i64 s, v8 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  for (int r = 0; r < 8; ++r) p[r * s] = t[r];
}

// A partial last block (n < 8 steps) goes through an 8×8 zero-padded copy; `Tail` holds it.
struct Tail {
  alignas(32) float buf[64];
  VSSM_AVX2_INLINE const float* in(const float* p, i64 s, i64 n) {
    for (int r = 0; r < 8; ++r)
      for (int j = 0; j < 8; ++j) buf[r * 8 + j] = j < n ? p[r * s + j] : 0.f;
    return buf;
  }
  VSSM_AVX2_INLINE void out(float* p, i64 s, i64 n) const {
    for (int r = 0; r < 8; ++r)
      for (int j = 0; j < n; ++j) p[r * s + j] = buf[r * 8 + j];
  }
};

// An output of 8 rows (row r at base + r·s) written in 8-step blocks. Two blocks that fill one
// 64-byte line per row (steps 16k .. 16k+15) are staged and written with streaming stores: these
// outputs are larger than the caches, and a plain store would first read each line in (measured:
// ~15% of the backward). Half lines cannot stream (that was slower), so the writer is only "on"
// when rows are 64-byte aligned; a block without its partner is written normally.
struct LineWriter {
  float* base;
  i64 s;
  bool on;
  i64 pending = -1;  // first step of the staged block, -1 if none
  alignas(64) float stage[8 * 16];

  LineWriter(float* b, i64 stride)
      : base(b), s(stride), on(reinterpret_cast<std::uintptr_t>(b) % 64 == 0 && stride % 16 == 0) {}

  // Where to store the block of steps [t0, t0+8) (row stride into *stride).
  VSSM_AVX2_INLINE float* dest(i64 t0, i64* stride) {
    if (!on) {
      *stride = s;
      return base + t0;
    }
    if (pending >= 0 && (pending & 8) == (t0 & 8)) flush();
    *stride = 16;
    return stage + (t0 & 8);
  }
  // After the block at t0 was stored: write its line if both halves are staged.
  VSSM_AVX2_INLINE void done(i64 t0) {
    if (!on) return;
    if (pending >= 0 && pending == (t0 ^ 8)) {
      const i64 line = t0 & ~i64(15);
      for (int r = 0; r < 8; ++r) {
        _mm256_stream_ps(base + r * s + line, ld(stage + r * 16));
        _mm256_stream_ps(base + r * s + line + 8, ld(stage + r * 16 + 8));
      }
      pending = -1;
    } else {
      if (pending >= 0) flush();
      pending = t0;
    }
  }
  // Writes a staged block without its partner with plain stores; fences the streaming stores.
  VSSM_AVX2_INLINE void flush() {
    if (pending >= 0)
      for (int r = 0; r < 8; ++r) st(base + r * s + pending, ld(stage + r * 16 + (pending & 8)));
    pending = -1;
  }
  VSSM_AVX2_INLINE void finish() {
    flush();
    if (on) _mm_sfence();
  }
};

// Per-tile constants, one lane per channel.
struct Tile {
  v8 A, D, bias;
};

VSSM_AVX2_INLINE Tile tile(const Args<float>& p, i64 d0) {
  Tile k;
  k.A = gather(p.A + d0 * p.A_sd, p.A_sd);
  k.D = p.D ? gather(p.D + d0 * p.D_s, p.D_s) : _mm256_setzero_ps();
  k.bias = p.bias ? gather(p.bias + d0 * p.bias_s, p.bias_s) : _mm256_setzero_ps();
  return k;
}

// X: raw δ in, δ out; Ea: exp(δ·A).
template <bool kSoftplus, bool kNonPos>
VSSM_AVX2_INLINE void discretize(const Tile& k, v8 (&X)[8], v8 (&Ea)[8]) {
  for (int j = 0; j < 8; ++j) X[j] = _mm256_add_ps(X[j], k.bias);
  if constexpr (kSoftplus) {
    v8 W[8];
    for (int j = 0; j < 8; ++j) W[j] = exp_neg_abs(X[j]);
    for (int j = 0; j < 8; ++j) X[j] = softplus_w(X[j], W[j]);
  }
  for (int j = 0; j < 8; ++j) Ea[j] = exp<kNonPos>(_mm256_mul_ps(X[j], k.A));
}

// δ (after softplus) saved by the forward for the backward (when a graph is built), so that the
// backward skips e^−|x| and softplus (σ = 1 − e^−δ is cheaper) and reads one stream instead of
// transposing δ: per tile (index (b·dim + d0)/8), per step t, the 8 lanes' δ. (Saving σ too was
// measured slower: both passes are close to memory-bound.)
constexpr i64 kSaved = 8;

template <typename F>  // float or const float
VSSM_AVX2_INLINE F* saved_tile(F* base, const Args<float>& p, i64 b, i64 d0) {
  return base + (b * p.dim + d0) / 8 * p.L * kSaved;
}

// One 8-step block of the forward: δ and u rows at dl/u (strides), y rows at y (stride ys); B, C
// the block's 8 values; h the state in/out; n (<= 8) steps advance h; ds (kSave) the block's
// saved δ (8 steps × 8 lanes).
template <bool kSoftplus, bool kNonPos, bool kSave>
VSSM_AVX2_INLINE void forward_block(const Tile& k, const float* dl, i64 dls, const float* u, i64 us,
                                    const float* B, const float* C, float* y, i64 ys, float* ds, i64 n,
                                    v8& h) {
  v8 X[8], U[8], Ea[8];
  load_t(dl, dls, X);
  load_t(u, us, U);
  discretize<kSoftplus, kNonPos>(k, X, Ea);
  if constexpr (kSave)  // streaming: read much later, no read-for-ownership
    for (int j = 0; j < 8; ++j) _mm256_stream_ps(ds + kSaved * j, X[j]);
  for (int j = 0; j < 8; ++j) X[j] = _mm256_mul_ps(_mm256_mul_ps(X[j], U[j]), _mm256_broadcast_ss(B + j));
  for (int j = 0; j < n; ++j) X[j] = h = _mm256_fmadd_ps(Ea[j], h, X[j]);
  for (int j = 0; j < 8; ++j) X[j] = _mm256_fmadd_ps(X[j], _mm256_broadcast_ss(C + j), _mm256_mul_ps(k.D, U[j]));
  store_t(y, ys, X);
}

template <bool kSoftplus, bool kNonPos, bool kSave>
VSSM_AVX2 void forward_tile(const Args<float>& p, i64 b, i64 d0) {
  const i64 L = p.L, g = d0 / p.cpg(), nblk = p.nblk(), row0 = b * p.dim + d0;
  const float* dl = p.dlrow(b, d0);
  const float* u = p.urow(b, d0);
  const float* Bt = p.Brow(b, g, 0);
  const float* Ct = p.Crow(b, g, 0);
  float* y = p.y + row0 * L;
  float* ds = kSave ? saved_tile(p.ds_out, p, b, d0) : nullptr;
  const Tile k = tile(p, d0);
  LineWriter yw(y, L);
  v8 h = _mm256_setzero_ps();
  for (i64 t0 = 0; t0 < L; t0 += 8) {
    const i64 n = std::min<i64>(8, L - t0);
    if (n == 8) {
      i64 ys;
      float* yd = yw.dest(t0, &ys);
      forward_block<kSoftplus, kNonPos, kSave>(k, dl + t0, p.dl_sd, u + t0, p.u_sd, Bt + t0, Ct + t0, yd, ys,
                                               kSave ? ds + t0 * kSaved : nullptr, 8, h);
      yw.done(t0);
    } else {
      Tail td, tu, ty;
      float bc[16] = {};
      alignas(32) float dsb[8 * kSaved];
      for (i64 j = 0; j < n; ++j) {
        bc[j] = Bt[t0 + j];
        bc[8 + j] = Ct[t0 + j];
      }
      forward_block<kSoftplus, kNonPos, kSave>(k, td.in(dl + t0, p.dl_sd, n), 8, tu.in(u + t0, p.u_sd, n), 8, bc,
                                               bc + 8, ty.buf, 8, dsb, n, h);
      ty.out(y + t0, L, n);
      if constexpr (kSave) std::copy(dsb, dsb + n * kSaved, ds + t0 * kSaved);
    }
    const i64 t1 = t0 + n;
    if (p.ckpt && (t1 % p.chunk == 0 || t1 == L)) scatter(p.ckpt + row0 * nblk + (t1 - 1) / p.chunk, nblk, h);
  }
  if (p.last) scatter(p.last + row0, 1, h);
  yw.finish();
  if constexpr (kSave) _mm_sfence();
}

// Backward state of a tile carried across blocks (time runs backwards).
struct BackCarry {
  v8 gnext, anext;       // g_{t+1} and exp(δ_{t+1}A) for the step being processed
  v8 accA, accD, accBias;
};

// Per step of a time block: the saved δ (ds, kSaved floats per step), and, recomputed from
// the block's checkpoint, exp(δA), h_{t−1} and u (one vector each).
struct BlockBuf {
  v8 *a, *hp, *u;
};

// Recompute of one 8-step block into bb at offset s0 (δ from the block's saved ds); h in/out.
template <bool kNonPos>
VSSM_AVX2_INLINE void recompute_block(const Tile& k, const float* u, i64 us, const float* B, const float* ds,
                                      i64 n, const BlockBuf& bb, i64 s0, v8& h) {
  v8 X[8], Ea[8];
  load_t(u, us, *reinterpret_cast<v8(*)[8]>(bb.u + s0));
  for (int j = 0; j < 8; ++j) X[j] = ld(ds + kSaved * j);
  for (int j = 0; j < 8; ++j) Ea[j] = exp<kNonPos>(_mm256_mul_ps(X[j], k.A));
  for (int j = 0; j < 8; ++j) {
    bb.a[s0 + j] = Ea[j];
    X[j] = _mm256_mul_ps(_mm256_mul_ps(X[j], bb.u[s0 + j]), _mm256_broadcast_ss(B + j));
  }
  for (int j = 0; j < n; ++j) {
    bb.hp[s0 + j] = h;
    h = _mm256_fmadd_ps(Ea[j], h, X[j]);
  }
  for (int j = static_cast<int>(n); j < 8; ++j) bb.hp[s0 + j] = _mm256_setzero_ps();  // padding
}

// Reverse walk over one 8-step block: dout rows at dout (stride dos) in; du, ddelta rows out
// (strides dus, dds); dB/dC (the block's 8 entries) accumulated; ds the block's saved δ.
template <bool kSoftplus>
VSSM_AVX2_INLINE void reverse_block(const Tile& k, const float* dout, i64 dos, const float* B, const float* C,
                                    const float* ds, float* du, i64 dus, float* ddl, i64 dds, float* dB,
                                    float* dC, i64 n, const BlockBuf& bb, i64 s0, BackCarry& c) {
  const v8* a = bb.a + s0;
  const v8* uu = bb.u + s0;
  const v8* hp = bb.hp + s0;
  v8 DY[8], G[8], DD[8], dBv[8], dCv[8], SG[8];
  load_t(dout, dos, DY);
  if constexpr (kSoftplus)
    for (int j = 0; j < 8; ++j) SG[j] = sigmoid_from_softplus(ld(ds + kSaved * j));
  for (int j = 0; j < 8; ++j) G[j] = _mm256_mul_ps(DY[j], _mm256_broadcast_ss(C + j));
  for (int j = static_cast<int>(n) - 1; j >= 0; --j) {  // g_t = C_t·dy_t + exp(δ_{t+1}A)·g_{t+1}
    G[j] = c.gnext = _mm256_fmadd_ps(c.anext, c.gnext, G[j]);
    c.anext = a[j];
  }
  for (int j = static_cast<int>(n); j < 8; ++j) G[j] = _mm256_setzero_ps();  // past the end
  for (int j = 0; j < 8; ++j) {
    const v8 Bj = _mm256_broadcast_ss(B + j);
    const v8 dt = ld(ds + kSaved * j);
    const v8 ah = _mm256_mul_ps(a[j], hp[j]);  // exp(δA)·h_{t−1}
    const v8 ub = _mm256_mul_ps(uu[j], Bj);
    const v8 gd = _mm256_mul_ps(G[j], dt);
    dCv[j] = _mm256_mul_ps(DY[j], _mm256_fmadd_ps(dt, ub, ah));  // dy·h_t
    dBv[j] = _mm256_mul_ps(gd, uu[j]);
    DD[j] = _mm256_mul_ps(G[j], _mm256_fmadd_ps(k.A, ah, ub));
    if constexpr (kSoftplus) DD[j] = _mm256_mul_ps(DD[j], SG[j]);
    c.accA = _mm256_fmadd_ps(gd, ah, c.accA);
    c.accD = _mm256_fmadd_ps(DY[j], uu[j], c.accD);
    DY[j] = _mm256_fmadd_ps(k.D, DY[j], _mm256_mul_ps(gd, Bj));  // du
  }
  for (int j = 0; j < 8; ++j) c.accBias = _mm256_add_ps(c.accBias, DD[j]);
  st(dB, _mm256_add_ps(ld(dB), hsum_t(dBv)));
  st(dC, _mm256_add_ps(ld(dC), hsum_t(dCv)));
  store_t(du, dus, DY);
  store_t(ddl, dds, DD);
}

// Backward for channels d0 .. d0+7 of batch b; dB/dC accumulate into dBp/dCp (length L). Time
// blocks of `chunk` steps (a multiple of 8), last to first: recompute the block from its
// checkpoint and the saved δ into per-thread buffers, then walk it backwards.
template <bool kSoftplus, bool kNonPos>
VSSM_AVX2 void backward_tile(const Args<float>& p, i64 b, i64 d0, float* dBp, float* dCp) {
  const i64 L = p.L, g = d0 / p.cpg(), nblk = p.nblk(), chunk = p.chunk, row0 = b * p.dim + d0;
  const float* u = p.urow(b, d0);
  const float* dout = p.dout + b * p.do_sb + d0 * p.do_sd;
  const float* Bt = p.Brow(b, g, 0);
  const float* Ct = p.Crow(b, g, 0);
  const float* ds = saved_tile(p.ds_in, p, b, d0);
  float* du = p.du + row0 * L;
  float* ddl = p.ddelta + row0 * L;
  const Tile k = tile(p, d0);
  float* raw = scratch<float>(static_cast<size_t>(3 * 8 * chunk + 8 * kSaved + 8));
  v8* buf = reinterpret_cast<v8*>((reinterpret_cast<std::uintptr_t>(raw) + 31) & ~std::uintptr_t(31));
  float* tail_ds = reinterpret_cast<float*>(buf + 3 * chunk);  // a partial last block's δ, zero-padded
  const v8 zero = _mm256_setzero_ps();
  BackCarry c{zero, zero, zero, zero, zero};
  LineWriter duw(du, L), ddw(ddl, L);
  for (i64 blk = nblk - 1; blk >= 0; --blk) {
    const i64 tb = blk * chunk, len = std::min(chunk, L - tb);
    const BlockBuf bb{buf, buf + chunk, buf + 2 * chunk};
    // δ is read in place, except for a partial last 8 steps (8 would read past L): a copy.
    if (len % 8) {
      std::fill(tail_ds, tail_ds + 8 * kSaved, 0.f);
      std::copy(ds + (tb + len / 8 * 8) * kSaved, ds + (tb + len) * kSaved, tail_ds);
    }
    v8 h = blk > 0 ? gather(p.ckpt_in + row0 * nblk + blk - 1, nblk) : zero;
    for (i64 s0 = 0; s0 < len; s0 += 8) {
      const i64 n = std::min<i64>(8, len - s0), t0 = tb + s0;
      if (n == 8) {
        recompute_block<kNonPos>(k, u + t0, p.u_sd, Bt + t0, ds + t0 * kSaved, 8, bb, s0, h);
      } else {
        Tail tu;
        float bv[8] = {};
        for (i64 j = 0; j < n; ++j) bv[j] = Bt[t0 + j];
        recompute_block<kNonPos>(k, tu.in(u + t0, p.u_sd, n), 8, bv, tail_ds, n, bb, s0, h);
      }
    }
    for (i64 s0 = (len - 1) / 8 * 8; s0 >= 0; s0 -= 8) {
      const i64 n = std::min<i64>(8, len - s0), t0 = tb + s0;
      if (n == 8) {
        i64 us_, ds_;
        float* dud = duw.dest(t0, &us_);
        float* ddd = ddw.dest(t0, &ds_);
        reverse_block<kSoftplus>(k, dout + t0, p.do_sd, Bt + t0, Ct + t0, ds + t0 * kSaved, dud, us_, ddd, ds_, dBp + t0,
                      dCp + t0, 8, bb, s0, c);
        duw.done(t0);
        ddw.done(t0);
      } else {
        Tail tdy, tdu, tdd;
        float bc[16] = {}, dbc[16] = {};
        for (i64 j = 0; j < n; ++j) {
          bc[j] = Bt[t0 + j];
          bc[8 + j] = Ct[t0 + j];
        }
        reverse_block<kSoftplus>(k, tdy.in(dout + t0, p.do_sd, n), 8, bc, bc + 8, tail_ds, tdu.buf, 8, tdd.buf, 8, dbc,
                      dbc + 8, n, bb, s0, c);
        tdu.out(du + t0, L, n);
        tdd.out(ddl + t0, L, n);
        for (i64 j = 0; j < n; ++j) {
          dBp[t0 + j] += dbc[j];
          dCp[t0 + j] += dbc[8 + j];
        }
      }
    }
  }
  duw.finish();
  ddw.finish();
  scatter(p.dA_part + row0, 1, c.accA);
  if (p.dD_part) scatter(p.dD_part + row0, 1, c.accD);
  if (p.dbias_part) scatter(p.dbias_part + row0, 1, c.accBias);
}

inline bool cpu_ok() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

// Runs the tile (forward, or backward when dBp is given) with the template matching softplus, the
// sign of A (softplus δ >= 0 and A <= 0 make δ·A <= 0: exp needs no overflow clamp) and saving.
inline void run_tile(const Args<float>& p, i64 b, i64 d0, float* dBp, float* dCp) {
  bool nonpos = p.softplus;
  for (int r = 0; r < 8 && nonpos; ++r) nonpos = p.A[(d0 + r) * p.A_sd] <= 0.f;
#define VSSM_N1(SP, NP)                                                                         \
  dBp ? backward_tile<SP, NP>(p, b, d0, dBp, dCp)                                                \
      : (p.ds_out ? forward_tile<SP, NP, true>(p, b, d0) : forward_tile<SP, NP, false>(p, b, d0))
  if (nonpos) VSSM_N1(true, true);
  else if (p.softplus) VSSM_N1(true, false);
  else VSSM_N1(false, false);
#undef VSSM_N1
}

}  // namespace n1

bool g_n1_path = true;

// Whether the N = 1 path runs for these sizes (the caller also needs float32).
inline bool n1_path_for(i64 N, bool has_z, i64 cpg) {
  return g_n1_path && N == 1 && !has_z && cpg % 8 == 0 && n1::cpu_ok();
}

inline bool use_n1_path(const Args<float>& p) { return n1_path_for(p.N, p.z != nullptr, p.cpg()); }
#else
bool g_n1_path = false;  // not compiled in: set_n1_path() has no effect
inline bool n1_path_for(i64, bool, i64) { return false; }
inline bool use_n1_path(const Args<float>&) { return false; }
#endif
