// Decode matrix-vector products with 8-bit integer dot products (dp4a), for the block types that dominate
// quantized models. x arrives quantized per 32 values (Q8Rows); a weight row is read in "units" of 16, 32 or 64
// values whose packed quants one lane loads with one or a few wide loads (Q6_K from its device layout,
// device_layout.h), and the 32 lanes of a warp take 32
// consecutive units, so a warp reads one contiguous run of the row (coalesced). Each thread issues the loads of
// one unit of each of its kRowsPerThread rows before it uses any of them: these kernels are bound by memory
// latency, and loads in flight are what hides it. The integer sums are exact and the block
// scales are applied in f32 (with the x block's d, and its s = d * sum(q) for the weights' offsets), so the result
// is the dot product of the dequantized weights with the dequantized x, up to f32 rounding.
#include <algorithm>
#include <type_traits>

#include "backend/cuda/activation.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dequant.cuh"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/matvec_q8.h"
#include "backend/cuda/q8.cuh"

namespace tessera::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kThreadsPerBlock = 32 * kWarpsPerBlock;

// Loads through the read-only data path: nothing a decode kernel reads is written during it.
__device__ __forceinline__ uint4 load16(const uint8_t* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ uint32_t load4_a2(const uint8_t* p) {  // 2-byte aligned
  const unsigned short* h = reinterpret_cast<const unsigned short*>(p);
  return static_cast<uint32_t>(__ldg(h)) | (static_cast<uint32_t>(__ldg(h + 1)) << 16);
}
__device__ __forceinline__ float load_f16(const uint8_t* p) {
  return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(p))));
}
__device__ __forceinline__ int4 load_x16(const int8_t* p) { return __ldg(reinterpret_cast<const int4*>(p)); }
__device__ __forceinline__ float2 load_ds(const float2* p) { return __ldg(p); }

__device__ __forceinline__ int low_nibbles(uint32_t q) { return static_cast<int>(q & 0x0F0F0F0Fu); }
__device__ __forceinline__ int high_nibbles(uint32_t q) { return static_cast<int>((q >> 4) & 0x0F0F0F0Fu); }

// Sum over four words of dp4a(a[i], b[i]): 16 products of signed bytes.
__device__ __forceinline__ int dot16(const int a[4], const int4& b) {
  return __dp4a(a[3], b.w, __dp4a(a[2], b.z, __dp4a(a[1], b.y, __dp4a(a[0], b.x, 0))));
}

// The 6-bit scale and min j (0..7) of a Q4_K / Q5_K super-block, whose 12 packed bytes are the words y, z, w of
// the block's first 16 bytes (x holds d and dmin); the packing is scale_min_k4 in dequant.cuh.
__device__ __forceinline__ void k4_scale_min(const uint4& head, int j, int& sc, int& m) {
  const int shift = 8 * (j % 4);
  const uint32_t a = head.y >> shift, b = head.z >> shift, c = head.w >> shift;
  if (j < 4) {
    sc = a & 63;
    m = b & 63;
  } else {
    sc = (c & 0xF) | (((a >> 6) & 3) << 4);
    m = ((c >> 4) & 0xF) | (((b >> 6) & 3) << 4);
  }
}

template <GgmlType T>
struct Q8Dot;

// The dot of one Q5_K unit (k = u % 8) with x, given its levels: lo for sub-block 2g, hi for 2g + 1
// (g = k / 2), 16 values each as packed bytes. The min terms need the sum over the whole 32-value x block (its
// ds.y); of the two units sharing it, the one with k even adds them.
template <class Act>
__device__ __forceinline__ float k5_unit_dot(const uint4& head, const int (&lo)[4], const int (&hi)[4], const Act& x,
                                             int k) {
  const int g = k / 2;
  int sc_lo, m_lo, sc_hi, m_hi;
  k4_scale_min(head, 2 * g, sc_lo, m_lo);
  k4_scale_min(head, 2 * g + 1, sc_hi, m_hi);
  const float d = f16_bits_to_float(head.x & 0xFFFF), dmin = f16_bits_to_float(head.x >> 16);
  float r = d * (static_cast<float>(sc_lo) * x.ds_lo.x * static_cast<float>(dot16(lo, x.lo)) +
                 static_cast<float>(sc_hi) * x.ds_hi.x * static_cast<float>(dot16(hi, x.hi)));
  if (k % 2 == 0) r -= dmin * (static_cast<float>(m_lo) * x.ds_lo.y + static_cast<float>(m_hi) * x.ds_hi.y);
  return r;
}

// Q4_K (144-byte super-blocks of 256 values, 16-byte aligned in a row: d, dmin, 12 bytes of scales and mins,
// qs[128]). Unit g (4 per super-block) is qs[32g..32g+31], all of sub-blocks 2g (low nibbles: values 64g+i) and
// 2g+1 (high nibbles: values 64g+32+i), i < 32, each of them against one x block: per 64 values one header load,
// one scale/min decode and two integer sums, and the 16-byte header is in flight once per 32 bytes of quants.
template <>
struct Q8Dot<GgmlType::Q4_K> {
  static constexpr int kValues = 64;
  struct Weights {
    uint4 head, qs_a, qs_b;
  };
  struct Act {
    int4 lo[2], hi[2];
    float2 ds_lo, ds_hi;
  };
  __device__ static Weights load(const uint8_t* row, int u, int) {
    const uint8_t* b = row + (u / 4) * 144 + 32 * (u % 4);
    return {load16(b - 32 * (u % 4)), load16(b + 16), load16(b + 32)};
  }
  __device__ static Act load_act(const int8_t* xq, const float2* ds, int u) {
    const int v = (u / 4) * 256 + 64 * (u % 4);
    return {{load_x16(xq + v), load_x16(xq + v + 16)},
            {load_x16(xq + v + 32), load_x16(xq + v + 48)},
            load_ds(ds + v / 32),
            load_ds(ds + v / 32 + 1)};
  }
  __device__ static float dot(const Weights& w, const Act& x, int u) {
    const uint32_t q[8] = {w.qs_a.x, w.qs_a.y, w.qs_a.z, w.qs_a.w, w.qs_b.x, w.qs_b.y, w.qs_b.z, w.qs_b.w};
    const int xlo[8] = {x.lo[0].x, x.lo[0].y, x.lo[0].z, x.lo[0].w, x.lo[1].x, x.lo[1].y, x.lo[1].z, x.lo[1].w};
    const int xhi[8] = {x.hi[0].x, x.hi[0].y, x.hi[0].z, x.hi[0].w, x.hi[1].x, x.hi[1].y, x.hi[1].z, x.hi[1].w};
    int lo = 0, hi = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      lo = __dp4a(low_nibbles(q[i]), xlo[i], lo);
      hi = __dp4a(high_nibbles(q[i]), xhi[i], hi);
    }
    // Scales and mins j = 2g and 2g + 1 (scale_min_k4 in dequant.cuh): bytes j, j + 1 of the words y (scales
    // 0..3, top bits of 4..7), z (mins 0..3, top bits of 4..7) and w (low bits of 4..7) for g < 2, of j - 4,
    // j - 3 for g >= 2.
    const int g = u % 4, shift = 16 * (g % 2);
    const uint32_t a = w.head.y >> shift, b = w.head.z >> shift, c = w.head.w >> shift;
    int sc_lo, sc_hi, m_lo, m_hi;
    if (g < 2) {
      sc_lo = a & 63, sc_hi = (a >> 8) & 63, m_lo = b & 63, m_hi = (b >> 8) & 63;
    } else {
      sc_lo = (c & 0xF) | ((a >> 2) & 0x30), sc_hi = ((c >> 8) & 0xF) | ((a >> 10) & 0x30);
      m_lo = ((c >> 4) & 0xF) | ((b >> 2) & 0x30), m_hi = ((c >> 12) & 0xF) | ((b >> 10) & 0x30);
    }
    const float d = f16_bits_to_float(w.head.x & 0xFFFF), dmin = f16_bits_to_float(w.head.x >> 16);
    return d * (static_cast<float>(sc_lo * lo) * x.ds_lo.x + static_cast<float>(sc_hi * hi) * x.ds_hi.x) -
           dmin * (static_cast<float>(m_lo) * x.ds_lo.y + static_cast<float>(m_hi) * x.ds_hi.y);
  }
};

// Q5_K (176-byte super-blocks, 16-byte aligned: d, dmin, scales[12] packed as Q4_K's, qh[32], qs[128]). Unit k
// (8 per super-block) is qs[16k..16k+15]: its low nibbles are values 64g+16h+i (sub-block 2g; g = k/2, h = k%2),
// its high nibbles values 64g+32+16h+i (sub-block 2g+1); their fifth bits are bit 2g (low nibbles) and 2g+1
// (high nibbles) of qh[16h + i].
template <>
struct Q8Dot<GgmlType::Q5_K> {
  static constexpr int kValues = 32;
  struct Weights {
    uint4 head, qh, qs;
  };
  struct Act {
    int4 lo, hi;
    float2 ds_lo, ds_hi;
  };
  __device__ static Weights load(const uint8_t* row, int u, int) {
    const uint8_t* b = row + (u / 8) * 176;
    const int k = u % 8;
    return {load16(b), load16(b + 16 + 16 * (k % 2)), load16(b + 48 + 16 * k)};
  }
  // Unit k's low nibbles are values 64g+16h+i (g = k/2, h = k%2), its high nibbles values 64g+32+16h+i.
  __device__ static Act load_act(const int8_t* xq, const float2* ds, int u) {
    const int k = u % 8, v = (u / 8) * 256 + 64 * (k / 2) + 16 * (k % 2);
    return {load_x16(xq + v), load_x16(xq + v + 32), load_ds(ds + v / 32), load_ds(ds + v / 32 + 1)};
  }
  __device__ static float dot(const Weights& w, const Act& x, int u) {
    const int k = u % 8, g = k / 2;
    const uint32_t q[4] = {w.qs.x, w.qs.y, w.qs.z, w.qs.w}, qh[4] = {w.qh.x, w.qh.y, w.qh.z, w.qh.w};
    int lo[4], hi[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      lo[i] = low_nibbles(q[i]) | static_cast<int>(((qh[i] >> (2 * g)) & 0x01010101u) << 4);
      hi[i] = high_nibbles(q[i]) | static_cast<int>(((qh[i] >> (2 * g + 1)) & 0x01010101u) << 4);
    }
    return k5_unit_dot(w.head, lo, hi, x, k);
  }
};

// Q6_K in its device layout (device_layout.h: a row's ql of every super-block, then its qh, its int8 scales and its
// d, at 16-byte aligned offsets). Value 128h + 32k + l of a super-block (h < 2, k < 4, l < 32) has its low 4 bits in
// ql[64h + 32(k%2) + l] (low nibble for k < 2, high for k >= 2), its top 2 bits in qh[32h + l] >> 2k and scale
// scales[8h + 2k + l/16]. Unit j (4 per super-block; h = j/2, l from 16(j%2)) takes 16 consecutive l for all four
// k: 64 values in four runs of 16, whose quants are three 16-byte runs (ql at 64h + l and 64h + 32 + l, qh at
// 32h + l) and whose four scales are one 8-byte word.
template <>
struct Q8Dot<GgmlType::Q6_K> {
  static constexpr int kValues = 64;
  struct Weights {
    uint4 ql_a, ql_b, qh;  // ql[64h + l..], ql[64h + 32 + l..], qh[32h + l..]
    uint2 scales;          // scales[8h..8h+7]
    float d;
  };
  struct Act {
    int4 x[4];
    float2 ds[4];
  };
  __device__ static Weights load(const uint8_t* row, int u, int n_units) {
    const int n_blocks = n_units / 4, block = u / 4, j = u % 4, h = j / 2, l = 16 * (j % 2);
    const uint8_t* ql = row + 128 * block + 64 * h + l;
    return {load16(ql), load16(ql + 32), load16(row + 128 * n_blocks + 64 * block + 32 * h + l),
            __ldg(reinterpret_cast<const uint2*>(row + 192 * n_blocks + 16 * block + 8 * h)),
            load_f16(row + 208 * n_blocks + 2 * block)};
  }
  __device__ static Act load_act(const int8_t* xq, const float2* ds, int u) {
    const int j = u % 4, v = (u / 4) * 256 + 128 * (j / 2) + 16 * (j % 2);
    Act a;
#pragma unroll
    for (int k = 0; k < 4; ++k) a.x[k] = load_x16(xq + v + 32 * k), a.ds[k] = load_ds(ds + v / 32 + k);
    return a;
  }
  __device__ static float dot(const Weights& w, const Act& x, int u) {
    const uint32_t ql_a[4] = {w.ql_a.x, w.ql_a.y, w.ql_a.z, w.ql_a.w};
    const uint32_t ql_b[4] = {w.ql_b.x, w.ql_b.y, w.ql_b.z, w.ql_b.w};
    const uint32_t qh[4] = {w.qh.x, w.qh.y, w.qh.z, w.qh.w};
    // Byte k: the scale of run k, scales[8h + 2k + l/16].
    const uint32_t scales = __byte_perm(w.scales.x, w.scales.y, u % 2 == 1 ? 0x7531 : 0x6420);
    float r = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int xw[4] = {x.x[k].x, x.x[k].y, x.x[k].z, x.x[k].w};
      int sum = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t ql = k % 2 == 0 ? ql_a[i] : ql_b[i];
        const uint32_t low = k < 2 ? ql & 0x0F0F0F0Fu : (ql >> 4) & 0x0F0F0F0Fu;
        const uint32_t high = ((qh[i] >> (2 * k)) & 0x03030303u) << 4;
        // q - 32 in each byte: q + 0x60 stays below 0x100, and flipping bit 7 subtracts 0x80 mod 256.
        const int centered = static_cast<int>(((low | high) + 0x60606060u) ^ 0x80808080u);
        sum = __dp4a(centered, xw[i], sum);
      }
      const int scale = static_cast<int8_t>((scales >> (8 * k)) & 0xFF);
      r += static_cast<float>(scale) * x.ds[k].x * static_cast<float>(sum);
    }
    return w.d * r;
  }
};

// Q4_0 (18-byte blocks of 32, 2-byte aligned: d, qs[16]; value i is d * (q - 8), low nibbles first). One unit is
// one block; the -8 offset comes out of the x block's s.
template <>
struct Q8Dot<GgmlType::Q4_0> {
  static constexpr int kValues = 32;
  struct Weights {
    uint32_t q[4];
    float d;
  };
  struct Act {
    int4 lo, hi;
    float2 ds;
  };
  __device__ static Weights load(const uint8_t* row, int u, int) {
    const uint8_t* b = row + u * 18;
    Weights w;
#pragma unroll
    for (int i = 0; i < 4; ++i) w.q[i] = load4_a2(b + 2 + 4 * i);
    w.d = load_f16(b);
    return w;
  }
  __device__ static Act load_act(const int8_t* xq, const float2* ds, int u) {
    return {load_x16(xq + 32 * u), load_x16(xq + 32 * u + 16), load_ds(ds + u)};
  }
  __device__ static float dot(const Weights& w, const Act& x, int) {
    int lo[4], hi[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) lo[i] = low_nibbles(w.q[i]), hi[i] = high_nibbles(w.q[i]);
    const int sum = dot16(lo, x.lo) + dot16(hi, x.hi);
    return w.d * (x.ds.x * static_cast<float>(sum) - 8.0f * x.ds.y);
  }
};

// Q8_0 (34-byte blocks of 32, 2-byte aligned: d, int8 qs[32]). One unit is half a block.
template <>
struct Q8Dot<GgmlType::Q8_0> {
  static constexpr int kValues = 16;
  struct Weights {
    int q[4];
    float d;
  };
  struct Act {
    int4 x;
    float2 ds;
  };
  __device__ static Weights load(const uint8_t* row, int u, int) {
    const uint8_t* b = row + (u / 2) * 34;
    Weights w;
#pragma unroll
    for (int i = 0; i < 4; ++i) w.q[i] = static_cast<int>(load4_a2(b + 2 + 16 * (u % 2) + 4 * i));
    w.d = load_f16(b);
    return w;
  }
  __device__ static Act load_act(const int8_t* xq, const float2* ds, int u) {
    return {load_x16(xq + 16 * u), load_ds(ds + u / 2)};
  }
  __device__ static float dot(const Weights& w, const Act& x, int) {
    return w.d * x.ds.x * static_cast<float>(dot16(w.q, x.x));
  }
};

// Rows whose weights each thread has in flight at once. With more tokens the activations and sums take the
// registers (4 rows at 8 tokens need ~250 and would halve the resident blocks). Q4_K's and Q6_K's 64-value units
// hold twice the bytes per row in flight: 2 rows (Q4_K: 70 registers, 7 blocks per SM) were faster than 4 (105, 4
// blocks; docs/notes/2026-11-27-cuda-fused-decode-attention.md), and Q6_K at 2 rows can share a launch with Q4_K
// at every width.
constexpr int rows_per_thread(GgmlType type, int n_tokens) {
  return n_tokens == 1 && type != GgmlType::Q4_K && type != GgmlType::Q6_K ? 4 : 2;
}

// The work of one block: the rows_per_group rows of its group, for every token; row_at(r) is the address of row r
// (rows past a matrix's end give its last row again, whose sums emit drops, so that no load needs a condition).
// The block's kThreads threads form teams of threads_per_row (32, 64 or 128, fewest that cover a row's units in
// one pass, at most kThreads / teams); a team takes kRowsPerThread rows, and thread i of a team units i,
// i + threads_per_row, ... of each of them. A 4096-wide Q4_K or Q6_K row is 64 units of 64 values (two teams per
// block), so at one token every thread of the block has the loads of one unit of each of its rows in
// flight before it waits for anything, and a warp's whole work is one round trip to memory: short per-block
// critical paths, many blocks in flight. Longer rows take more passes, kStages of them in flight at a time (the
// first kStages before the wait). The warps of a team add their sums through shared memory, and one thread per row
// and token hands the result to emit(r, token, sum). hooks.after_wait() runs after the previous kernel has
// finished (loads whose results are wanted at the end), hooks.before_barrier() before the barrier that precedes
// emit.
template <GgmlType T, int kTokens, int kRowsPerThread, int kThreads, int kStages, class RowAt, class Hooks,
          class Emit>
__device__ __forceinline__ void matvec_q8_rows(RowAt row_at, int64_t n_cols, int rows_per_group,
                                               const int8_t* __restrict__ xq, const float2* __restrict__ xds,
                                               int64_t ld, Hooks& hooks, Emit emit) {
  using Dot = Q8Dot<T>;
  constexpr int kWarps = kThreads / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int teams = rows_per_group / kRowsPerThread, threads_per_row = kThreads / teams;
  const int team = threadIdx.x / threads_per_row, first_unit = threadIdx.x % threads_per_row;
  const uint8_t* rows[kRowsPerThread];
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) rows[r] = row_at(team * kRowsPerThread + r);
  const int n_units = static_cast<int>(n_cols / Dot::kValues);
  const int64_t ld_ds = ld / kQ8Block;

  // Past the end: loads a valid unit, whose sum the loop never adds.
  auto load_weights = [&](typename Dot::Weights(&into)[kRowsPerThread], int u) {
    u = min(u, n_units - 1);
#pragma unroll
    for (int r = 0; r < kRowsPerThread; ++r) into[r] = Dot::load(rows[r], u, n_units);
  };
  float acc[kRowsPerThread][kTokens] = {};
  auto accumulate = [&](const typename Dot::Weights(&w)[kRowsPerThread], int u) {
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      const typename Dot::Act a = Dot::load_act(xq + t * ld, xds + t * ld_ds, u);
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) acc[r][t] += Dot::dot(w[r], a, u);
    }
  };
  // The weights do not depend on the previous kernel: the first kStages passes' are on their way before waiting
  // for it. Each pass has its set of registers (kStages in turn), refilled with the pass kStages later as soon as it
  // has been used.
  typename Dot::Weights w[kStages][kRowsPerThread];
#pragma unroll
  for (int s = 0; s < kStages; ++s) {
    if (s == 0 || first_unit + s * threads_per_row < n_units) load_weights(w[s], first_unit + s * threads_per_row);
  }
  allow_next_kernel();
  wait_for_previous_kernel();
  hooks.after_wait();
  for (int u = first_unit; u < n_units; u += kStages * threads_per_row) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      const int pass_unit = u + s * threads_per_row;
      if (pass_unit >= n_units) break;
      accumulate(w[s], pass_unit);
      if (pass_unit + kStages * threads_per_row < n_units) load_weights(w[s], pass_unit + kStages * threads_per_row);
    }
  }

  // Warp sums, then the sum over the warps of each team.
  __shared__ float warp_sums[kWarps][kRowsPerThread][kTokens];
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      float s = acc[r][t];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xFFFFFFFFu, s, offset);
      if (lane == 0) warp_sums[warp][r][t] = s;
    }
  }
  hooks.before_barrier();
  __syncthreads();
  if (threadIdx.x < teams * kRowsPerThread * kTokens) {
    const int out_team = threadIdx.x / (kRowsPerThread * kTokens);
    const int r = threadIdx.x / kTokens % kRowsPerThread, t = threadIdx.x % kTokens;
    const int warps_per_team = threads_per_row / 32;
    float s = 0;
    for (int k = 0; k < warps_per_team; ++k) s += warp_sums[out_team * warps_per_team + k][r][t];
    emit(out_team * kRowsPerThread + r, t, s);
  }
}

// row_at for matvec_q8_rows: the rows of `matrix` from group_row on.
__device__ __forceinline__ auto rows_of(const DeviceMatrix& matrix, int64_t group_row) {
  return [&matrix, group_row](int r) {
    return matrix.data + min(group_row + r, matrix.n_rows - 1) * static_cast<int64_t>(matrix.row_bytes);
  };
}

// Hooks for a consumer of a fused RMSNorm (NormScale). After the wait, thread i loads sum of squares i of each
// token (in flight during the matvec; a block has a thread per Q8 block of a row up to kMaxFusedNormWidth); before
// the barrier each warp adds its threads' up; scaled() adds the warps' (in a fixed order: steps are reproducible)
// into 1 / rms. A separate instantiation, so that the plain kernels keep their registers.
template <int kTokens, int kWarps>
struct ScaleByNorm {
  static_assert(kWarps * 32 * kQ8Block >= kMaxFusedNormWidth, "a thread per sum");
  const NormScale norm;
  double* warp_totals;  // shared, [kWarps][kTokens]
  float sums[kTokens];

  __device__ void after_wait() {
    const int n_sums = norm.n / kQ8Block;
#pragma unroll
    for (int t = 0; t < kTokens; ++t) sums[t] = threadIdx.x < n_sums ? norm.sums[t * n_sums + threadIdx.x] : 0.0f;
  }
  __device__ void before_barrier() {
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      double total = sums[t];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xFFFFFFFFu, total, offset);
      if (threadIdx.x % 32 == 0) warp_totals[threadIdx.x / 32 * kTokens + t] = total;
    }
  }
  __device__ float scaled(int t, float s) const {
    double total = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += warp_totals[w * kTokens + t];
    return s * (1.0f / sqrtf(static_cast<float>(total / norm.n) + norm.eps));
  }
};

// Hooks of a plain consumer (x quantized as it is).
struct Unscaled {
  __device__ Unscaled(const NormScale&, double*) {}
  __device__ void after_wait() const {}
  __device__ void before_barrier() const {}
  __device__ float scaled(int, float s) const { return s; }
};

// One block per row group of a launch's jobs (matvec_jobs.cuh): the group of blockIdx.x, which is in job j.
// kNormScaled: x is a fused RMSNorm's unscaled output (NormScale).
template <GgmlType T, int kTokens, bool kNormScaled, int kRowsPerThread = rows_per_thread(T, kTokens)>
__device__ __forceinline__ void matvec_q8_group(const MatvecGroups& groups, int j, const int8_t* __restrict__ xq,
                                                const float2* __restrict__ xds, int64_t ld, const NormScale& norm) {
  const MatvecJob job = job_at(groups, j);
  const int64_t group_row = static_cast<int64_t>(blockIdx.x - groups.group_start[j]) * groups.rows_per_group;
  __shared__ double warp_totals[kThreadsPerBlock / 32][kTokens];
  using Hooks = std::conditional_t<kNormScaled, ScaleByNorm<kTokens, kThreadsPerBlock / 32>, Unscaled>;
  Hooks hooks{norm, &warp_totals[0][0]};
  matvec_q8_rows<T, kTokens, kRowsPerThread, kThreadsPerBlock, 1>(
      rows_of(job.w, group_row), job.w.n_cols, groups.rows_per_group, xq, xds, ld, hooks,
      [&](int row, int t, float s) {
        if (group_row + row >= job.w.n_rows) return;
        float* out = job.y + t * job.ldy + group_row + row;
        s = hooks.scaled(t, s);
        *out = job.accumulate ? *out + s : s;
      });
}

// Register budgets, chosen by measurement: the scaled one-token Q4_K kernel is held to 7 blocks per SM (72
// registers; unbounded it takes 74, which fits 6), and the others are given a minimum of one block, which lets
// ptxas spend more registers where it sees a use (the 32-value Q6_K units of the file layout at one token: 72 ->
// 115). Decode gained clearly more this way than with no bounds (docs/notes/2026-11-27-cuda-fused-rmsnorm.md).
constexpr int kQ4KBlocksPerSm = 7;
constexpr int min_blocks_per_sm(GgmlType type, int n_tokens, bool norm_scaled) {
  return type == GgmlType::Q4_K && n_tokens == 1 && norm_scaled ? kQ4KBlocksPerSm : 1;
}

template <GgmlType T, int kTokens, bool kNormScaled>
__global__ void __launch_bounds__(kThreadsPerBlock, min_blocks_per_sm(T, kTokens, kNormScaled))
    matvec_q8_kernel(const MatvecGroups groups, const int8_t* __restrict__ xq, const float2* __restrict__ xds,
                     int64_t ld, const NormScale norm) {
  matvec_q8_group<T, kTokens, kNormScaled>(groups, job_of(groups, blockIdx.x), xq, xds, ld, norm);
}

// A Q4_K_M layer's Wq, Wk (Q4_K) and Wv (Q6_K) in one launch: the jobs from first_q6_k_job on are Q6_K. Two
// launches ran Wv alone in 1.3 waves of blocks after Wq/Wk had drained.
template <bool kNormScaled>
__global__ void __launch_bounds__(kThreadsPerBlock)
    matvec_q4_k_q6_k_kernel(const MatvecGroups groups, int first_q6_k_job, const int8_t* __restrict__ xq,
                            const float2* __restrict__ xds, int64_t ld, const NormScale norm) {
  const int j = job_of(groups, blockIdx.x);
  if (j < first_q6_k_job) {
    matvec_q8_group<GgmlType::Q4_K, 1, kNormScaled>(groups, j, xq, xds, ld, norm);
  } else {
    matvec_q8_group<GgmlType::Q6_K, 1, kNormScaled>(groups, j, xq, xds, ld, norm);
  }
}

// The fused-RMSNorm producer (NormOutput): a block owns one Q8 block's worth of rows (32), so that it can quantize
// them itself once they are summed: warp t takes token t, lane i row 32 * blockIdx.x + i. The grid is n_rows / 32
// blocks (64 at TinyLlama's 2048, 128 at 4096), one per SM, with the plain kernel's rows per thread
// (rows_per_thread: 4 at one token, Q4_K and Q6_K 2; Q6_K's former 32-value units at 8 instead of 4, for more
// bytes in flight, were slower: docs/notes/2026-11-27-cuda-fused-rmsnorm.md). kThreads (at most 512) grows with
// the row's units. At one token Q4_K and Q6_K keep as many passes in flight as the row takes, up to three
// (kStages; one block per SM has the registers: 120 / 128 at three, no spill): each pass more in flight made the
// 7B faster, with several kernels running ahead (launch.cuh; docs/notes/2026-11-27-cuda-q6k-device-layout.md).
// Not measured for the other types (Q5_K would
// spill), nor at more tokens (Q4_K would spill). These blocks are one per SM at the widths served here, so a
// minimum of one block per SM costs nothing and keeps ptxas from spilling to fit two.
constexpr bool norm_keeps_passes_in_flight(GgmlType type) { return type == GgmlType::Q4_K || type == GgmlType::Q6_K; }
constexpr int kMaxNormStages = 3;
constexpr int kMaxNormThreads = 512;

template <GgmlType T, int kTokens, int kThreads, int kStages>
__global__ void __launch_bounds__(kThreads, 1)
    matvec_q8_norm_kernel(const MatvecJob job, const int8_t* __restrict__ xq, const float2* __restrict__ xds,
                          int64_t ld, const NormOutput norm) {
  static_assert(kThreads / 32 >= kTokens, "a warp per token");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t group_row = static_cast<int64_t>(blockIdx.x) * kQ8Block, row = group_row + lane;
  const float weight = norm.weight[row];
  __shared__ float sums[kQ8Block][kTokens];
  // y's old value, which the residual add needs, is read right after the wait.
  struct LoadResidual {
    const float* y;  // this lane's row of token 0
    int64_t ldy;
    float old = 0;
    __device__ void after_wait() {
      if (threadIdx.x / 32 < kTokens) old = y[(threadIdx.x / 32) * ldy];
    }
    __device__ void before_barrier() const {}
  } residual{job.y + row, job.ldy};
  matvec_q8_rows<T, kTokens, rows_per_thread(T, kTokens), kThreads, kStages>(
      rows_of(job.w, group_row), job.w.n_cols, kQ8Block, xq, xds, ld, residual,
      [&](int r, int t, float s) { sums[r][t] = s; });
  __syncthreads();
  if (warp >= kTokens) return;
  const int t = warp;
  const float y = residual.old + sums[lane][t];
  job.y[t * job.ldy + row] = y;
  float square_sum = y * y;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) square_sum += __shfl_xor_sync(0xFFFFFFFFu, square_sum, offset);
  if (lane == 0) norm.sums[t * (job.w.n_rows / kQ8Block) + blockIdx.x] = square_sum;
  quantize_q8_block(y * weight, norm.q8, t, blockIdx.x, lane);
}

// Gate and up projections with SwiGLU and its quantization fused (one token; the f32 products are not written): a
// block owns 32 rows of each, one Q8 block of the output, which its first warp quantizes as silu(gate) * up. 16
// teams of 32 threads take 4 rows each (two passes at 4096 columns). kNormScaled: x is a fused RMSNorm's unscaled
// output (NormScale).
constexpr int kSwigluThreads = 512;
constexpr int kSwigluRowsPerThread = 4;

template <GgmlType T, bool kNormScaled>
__global__ void __launch_bounds__(kSwigluThreads)
    matvec_q8_swiglu_kernel(const DeviceMatrix gate, const DeviceMatrix up, const int8_t* __restrict__ xq,
                            const float2* __restrict__ xds, int64_t ld, const NormScale norm, const Q8Rows out) {
  static_assert(2 * kQ8Block / kSwigluRowsPerThread * 32 == kSwigluThreads, "teams of 32 threads");
  const int64_t group_row = static_cast<int64_t>(blockIdx.x) * kQ8Block;
  __shared__ double warp_totals[kSwigluThreads / 32][1];
  __shared__ float products[2 * kQ8Block];  // the gate rows, then the up rows
  using Hooks = std::conditional_t<kNormScaled, ScaleByNorm<1, kSwigluThreads / 32>, Unscaled>;
  Hooks hooks{norm, &warp_totals[0][0]};
  const auto row_at = [&](int r) {
    const DeviceMatrix& w = r < kQ8Block ? gate : up;
    return w.data + (group_row + r % kQ8Block) * static_cast<int64_t>(w.row_bytes);
  };
  matvec_q8_rows<T, 1, kSwigluRowsPerThread, kSwigluThreads, 1>(
      row_at, gate.n_cols, 2 * kQ8Block, xq, xds, ld, hooks,
      [&](int r, int t, float s) { products[r] = hooks.scaled(t, s); });
  __syncthreads();
  if (threadIdx.x >= 32) return;
  const int lane = static_cast<int>(threadIdx.x);
  const float g = products[lane];
  quantize_q8_block(silu(g) * products[kQ8Block + lane], out, 0, blockIdx.x, lane);
}

// Rows per block (teams x rows per thread) of a launch of type T at a width.
template <GgmlType T>
int rows_per_group(int64_t n_cols, int n_tokens) {
  const int64_t n_units = n_cols / Q8Dot<T>::kValues;
  const int threads_per_row = n_units <= 32 ? 32 : n_units <= 64 ? 64 : kThreadsPerBlock;
  return rows_per_thread(T, n_tokens) * (kThreadsPerBlock / threads_per_row);
}

// f(std::integral_constant<int, n_tokens>{}) for a decode step's 1..kMaxMatvecTokens tokens: the kernels take the
// token count as a template parameter.
template <class F>
void with_token_count(int n_tokens, F&& f) {
  switch (n_tokens) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

struct LaunchQ8 {
  const MatvecJob* jobs;
  int n_jobs;
  const Q8Rows* xq;
  int n_tokens;
  const NormScale* norm;
  cudaStream_t stream;

  template <GgmlType T>
  void operator()() const {
    if constexpr (has_q8_kernel(T)) with_token_count(n_tokens, [&](auto tokens) { launch<T, tokens.value>(); });
  }
  template <GgmlType T, int kTokens>
  void launch() const {
    const MatvecGroups groups = make_matvec_groups(jobs, n_jobs, rows_per_group<T>(jobs[0].w.n_cols, kTokens));
    const int n_groups = groups.group_start[groups.n_jobs];
    auto* kernel = norm->sums ? matvec_q8_kernel<T, kTokens, true> : matvec_q8_kernel<T, kTokens, false>;
    launch_chained("matvec_q8_kernel", kernel, dim3(n_groups), dim3(kThreadsPerBlock), 0, stream, groups, xq->q,
                   xq->ds, xq->ld, *norm);
  }
};

struct LaunchQ8Norm {
  const MatvecJob* job;
  const Q8Rows* xq;
  int n_tokens;
  const NormOutput* norm;
  cudaStream_t stream;

  template <GgmlType T>
  void operator()() const {
    if constexpr (has_q8_kernel(T)) {
      with_token_count(n_tokens, [&](auto tokens) {
        if constexpr (tokens.value == 1) {
          launch_one_token<T>();
        } else {
          launch<T, tokens.value, kMaxNormThreads, 1>();
        }
      });
    }
  }
  // Teams of the fewest threads per row (32, 64, 128) that cover its units in one pass, within kMaxNormThreads.
  template <GgmlType T>
  void launch_one_token() const {
    constexpr int kTeams = kQ8Block / rows_per_thread(T, 1);
    const int64_t n_units = job->w.n_cols / Q8Dot<T>::kValues;
    const int threads_per_row = std::min(n_units <= 32 ? 32 : n_units <= 64 ? 64 : 128, kMaxNormThreads / kTeams);
    const int passes = static_cast<int>((n_units + threads_per_row - 1) / threads_per_row);
    const int stages = norm_keeps_passes_in_flight(T) ? std::clamp(passes, 1, kMaxNormStages) : 1;
    if constexpr (kTeams * 32 <= 256) {  // (teams of at least 32 threads)
      if (threads_per_row * kTeams == 256) return launch_stages<T, 256>(stages);
    }
    launch_stages<T, kMaxNormThreads>(stages);
  }
  template <GgmlType T, int kThreads>
  void launch_stages(int stages) const {
    if constexpr (norm_keeps_passes_in_flight(T)) {
      static_assert(kMaxNormStages == 3);
      if (stages == 3) return launch<T, 1, kThreads, 3>();
      if (stages == 2) return launch<T, 1, kThreads, 2>();
    }
    launch<T, 1, kThreads, 1>();
  }
  template <GgmlType T, int kTokens, int kThreads, int kStages>
  void launch() const {
    launch_chained("matvec_q8_norm_kernel", matvec_q8_norm_kernel<T, kTokens, kThreads, kStages>,
                   dim3(static_cast<unsigned>(job->w.n_rows / kQ8Block)), dim3(kThreads), 0, stream, *job, xq->q,
                   xq->ds, xq->ld, *norm);
  }
};

struct LaunchQ8Swiglu {
  const DeviceMatrix* gate;
  const DeviceMatrix* up;
  const Q8Rows* xq;
  const NormScale* norm;
  const Q8Rows* out;
  cudaStream_t stream;

  template <GgmlType T>
  void operator()() const {
    if constexpr (has_q8_kernel(T)) {
      auto* kernel = norm->sums ? matvec_q8_swiglu_kernel<T, true> : matvec_q8_swiglu_kernel<T, false>;
      launch_chained("matvec_q8_swiglu_kernel", kernel, dim3(static_cast<unsigned>(gate->n_rows / kQ8Block)),
                     dim3(kSwigluThreads), 0, stream, *gate, *up, xq->q, xq->ds, xq->ld, *norm, *out);
    }
  }
};

}  // namespace

void matvec_q8(const MatvecJob* jobs, int n_jobs, const Q8Rows& xq, int n_tokens, const NormScale& norm,
               cudaStream_t stream) {
  dispatch_type(jobs[0].w.type, LaunchQ8{jobs, n_jobs, &xq, n_tokens, &norm, stream});
}

bool matvec_q8_mixes(GgmlType first, GgmlType second, int64_t n_cols, int n_tokens) {
  return first == GgmlType::Q4_K && second == GgmlType::Q6_K && n_tokens == 1 && n_cols % 256 == 0 &&
         rows_per_group<GgmlType::Q4_K>(n_cols, 1) == rows_per_group<GgmlType::Q6_K>(n_cols, 1);
}

void matvec_q8_mixed(const MatvecJob* jobs, int n_jobs, int first_second_type_job, const Q8Rows& xq,
                     const NormScale& norm, cudaStream_t stream) {
  const MatvecGroups groups =
      make_matvec_groups(jobs, n_jobs, rows_per_group<GgmlType::Q4_K>(jobs[0].w.n_cols, 1));
  auto* kernel = norm.sums ? matvec_q4_k_q6_k_kernel<true> : matvec_q4_k_q6_k_kernel<false>;
  launch_chained("matvec_q4_k_q6_k_kernel", kernel, dim3(groups.group_start[groups.n_jobs]), dim3(kThreadsPerBlock), 0,
                 stream, groups, first_second_type_job, xq.q, xq.ds, xq.ld, norm);
}

void matvec_q8_norm(const MatvecJob& job, const Q8Rows& xq, int n_tokens, const NormOutput& norm,
                    cudaStream_t stream) {
  dispatch_type(job.w.type, LaunchQ8Norm{&job, &xq, n_tokens, &norm, stream});
}

void matvec_q8_swiglu(const DeviceMatrix& gate, const DeviceMatrix& up, const Q8Rows& xq, const NormScale& norm,
                      const Q8Rows& out, cudaStream_t stream) {
  dispatch_type(gate.type, LaunchQ8Swiglu{&gate, &up, &xq, &norm, &out, stream});
}

}  // namespace tessera::cuda
