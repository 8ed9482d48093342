// Paged decode attention for many sequences (paged_attention.h), on the CUDA cores: a decode token has one query row
// per head, so even a GQA group of 8 fills half of an mma's 16 rows (Llama-2-7B's group of 1, one sixteenth), and
// the work is bound by reading K and V.
//
// Grid (tokens, KV heads x head blocks, splits), 128 threads. A block serves QH query heads of one KV head for one
// token and one split of its keys. It walks the split's keys in tiles that cp.async gathers through the block table
// into shared memory, `stages` tiles deep. A head's K or V row is cut into 16-byte chunks, and a team of
// lanes_per_key consecutive lanes (the chunk count rounded up to a power of two) takes one key at a time: each lane
// holds its chunk of the QH queries in registers, so a score is a few FMAs and a shuffle reduction within the team;
// then a warp per head updates the running maximum and sum (online softmax in base 2), and each lane adds its chunk
// of the weighted values of its team's keys for the QH heads. The teams' sums meet once, at the end (shuffles within
// a warp, then shared memory).
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "backend/cuda/async_copy.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_limits.h"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/paged_attention.h"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTileKBytes = 16 * 1024;  // K rows per tile (as many V bytes): 32 KiB of copies per stage
constexpr int kMinTileKeys = 16;
constexpr int kMaxTileKeys = 256;
constexpr int kMaxStages = 3;
constexpr int kMaxRowBytes = 512;  // a team is at most a warp
constexpr int kMaxSplits = 32;
constexpr int kMinKeysPerSplit = 128;
constexpr int kCombineThreads = 128;

// Byte offsets into a block's dynamic shared memory. The teams' final sums (kWarps x QH x head_dim floats) reuse the
// stages, which hold at least 4 x 16 keys x head_dim x 2 bytes: enough for QH <= 8.
struct PagedLayout {
  int tile_keys = 0;
  int stages = 0;
  int row_bytes = 0;    // one head's K or V row
  int stage_bytes = 0;  // the K tile, then the V tile
  int scores = 0;       // [QH][tile_keys] f32
  int state = 0;        // running max, running sum, rescale factor of each head: [3][QH] f32
  int total = 0;
};

int align16(int n) { return (n + 15) / 16 * 16; }

PagedLayout make_layout(int row_bytes, int qh, int tile_keys, int stages) {
  PagedLayout l;
  l.tile_keys = tile_keys;
  l.stages = stages;
  l.row_bytes = row_bytes;
  l.stage_bytes = 2 * tile_keys * row_bytes;
  int at = stages * l.stage_bytes;
  l.scores = at, at += align16(qh * tile_keys * 4);
  l.state = at, at += align16(3 * qh * 4);
  l.total = at;
  return l;
}

// Keys and values in one format, f16 or f32 (the quantized formats' two planes are not read here).
int row_bytes_of(const AttentionParams& p) { return p.head_dim * ((p.k_format == KvFormat::F16) ? 2 : 4); }

// Query heads per block: a KV head's whole group where it has up to 8, else the largest of 8, 4, 2, 1 dividing it.
int heads_per_block(const AttentionParams& p) {
  const int group = p.n_head / p.n_head_kv;
  return group % 8 == 0 ? 8 : group % 4 == 0 ? 4 : group % 2 == 0 ? 2 : 1;
}

// 16 KiB of K rows per tile (16..256 keys) and 3 stages, shrunk (stages first) until two blocks share an SM, else
// until one block fits; total == 0 when not even that does.
PagedLayout choose_layout(const AttentionParams& p, const DeviceLimits& limits) {
  const int row_bytes = row_bytes_of(p), qh = heads_per_block(p);
  const int first_tile = std::min(kMaxTileKeys, std::max(kMinTileKeys, kTileKBytes / row_bytes));
  for (const int blocks : {2, 1}) {
    int tile = first_tile, stages = kMaxStages;
    while (true) {
      const PagedLayout l = make_layout(row_bytes, qh, tile, stages);
      if (l.total <= limits.max_shared_per_block &&
          blocks * (l.total + limits.reserved_shared_per_block) <= limits.shared_per_sm) {
        return l;
      }
      if (stages > 2) {
        --stages;
      } else if (tile / 2 >= kMinTileKeys) {
        tile /= 2;
      } else {
        break;
      }
    }
  }
  return {};
}

struct PagedArgs {
  const float* q;  // [n_tokens][n_head * head_dim]
  const uint8_t* k_cache;
  const uint8_t* v_cache;
  PagedKeys keys;
  int block_shift;
  int n_head;
  int n_head_kv;
  int head_dim;
  int chunks;         // 16-byte chunks of a row
  int lanes_per_key;  // chunks rounded up to a power of two
  float scale_log2;   // log2(e) / sqrt(head_dim)
  PagedLayout layout;
  float* partials;  // [n_tokens][n_head][n_splits][head_dim + 2] when split
  float* out;
  __half* out16;
};

template <bool F16>
constexpr int kChunkValues = F16 ? 8 : 4;

// One 16-byte chunk of a cache row as floats (zeros when !valid).
template <bool F16>
__device__ __forceinline__ void load_chunk(const uint8_t* p, bool valid, float (&x)[kChunkValues<F16>]) {
  if (!valid) {
#pragma unroll
    for (int e = 0; e < kChunkValues<F16>; ++e) x[e] = 0.0f;
    return;
  }
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (F16) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
      x[2 * i] = f.x;
      x[2 * i + 1] = f.y;
    } else {
      x[i] = __uint_as_float(w[i]);
    }
  }
}

template <int QH, bool F16>
__global__ void __launch_bounds__(kThreads) paged_attention_kernel(const PagedArgs a) {
  constexpr int E = kChunkValues<F16>;
  extern __shared__ __align__(16) uint8_t smem[];
  const PagedLayout& lay = a.layout;
  float* const scores = reinterpret_cast<float*>(smem + lay.scores);  // [QH][tile_keys]
  float* const m_run = reinterpret_cast<float*>(smem + lay.state);    // [QH], base 2
  float* const l_run = m_run + QH;                                    // [QH]
  float* const rescale = l_run + QH;                                  // [QH]
  float* const team_sums = reinterpret_cast<float*>(smem);            // [kWarps][QH][head_dim], after the tiles

  const int token = blockIdx.x, split = blockIdx.z, n_splits = gridDim.z;
  const int group = a.n_head / a.n_head_kv, head_blocks = group / QH;
  const int kv_head = blockIdx.y / head_blocks, h0 = kv_head * group + (blockIdx.y % head_blocks) * QH;
  const int hd = a.head_dim;
  const int64_t q_dim = static_cast<int64_t>(a.n_head) * hd;
  const int64_t slot_bytes = static_cast<int64_t>(a.n_head_kv) * lay.row_bytes;
  const int64_t head_bytes = static_cast<int64_t>(kv_head) * lay.row_bytes;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int team_lanes = a.lanes_per_key, chunk = tid % team_lanes, team = tid / team_lanes;
  const int n_teams = kThreads / team_lanes;
  const bool has_chunk = chunk < a.chunks;
  const int tile = lay.tile_keys, stages = lay.stages;

  allow_next_kernel();
  wait_for_previous_kernel();  // q and the cache come from earlier kernels of the step

  const int first = a.keys.first_key ? a.keys.first_key[token] : 0;
  const KeyRange range = split_key_range(first, a.keys.n_keys[token], n_splits, split);
  const int32_t* const table = a.keys.block_tables + a.keys.table_offsets[token];
  const int n_tiles = (range.end - range.begin + tile - 1) / tile;

  auto copy_tile = [&](int index, int stage) {
    const int key0 = range.begin + index * tile, n = min(tile, range.end - key0);
    uint8_t* const k_dst = smem + stage * lay.stage_bytes;
    uint8_t* const v_dst = k_dst + tile * lay.row_bytes;
    for (int i = tid; i < n * a.chunks; i += kThreads) {
      const int j = i / a.chunks, c = i % a.chunks;
      const int64_t at = paged_key_slot(table, a.block_shift, key0 + j) * slot_bytes + head_bytes + 16 * c;
      copy_16_async(k_dst + j * lay.row_bytes + 16 * c, a.k_cache + at);
      copy_16_async(v_dst + j * lay.row_bytes + 16 * c, a.v_cache + at);
    }
  };
  for (int s = 0; s < stages - 1; ++s) {
    if (s < n_tiles) copy_tile(s, s);
    commit_async_copies();  // empty groups too: every iteration then waits for the same count
  }

  // This lane's chunk of the QH queries; with an f16 cache rounded to f16, as ggml does before its f16 dot products.
  float qv[QH][E];
#pragma unroll
  for (int h = 0; h < QH; ++h) {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float x = has_chunk ? a.q[token * q_dim + (h0 + h) * hd + chunk * E + e] : 0.0f;
      qv[h][e] = F16 ? __half2float(__float2half_rn(x)) : x;
    }
  }
  if (tid < QH) {
    m_run[tid] = -INFINITY;
    l_run[tid] = 0.0f;
  }
  float acc[QH][E] = {};

  for (int it = 0; it < n_tiles; ++it) {
    wait_async_copies_at_most(stages - 2);  // this iteration's tile has landed
    // All copies of the tile are visible, and everyone is done with the stage the next copies overwrite.
    __syncthreads();
    if (it + stages - 1 < n_tiles) copy_tile(it + stages - 1, (it + stages - 1) % stages);
    commit_async_copies();
    const uint8_t* const k_tile = smem + (it % stages) * lay.stage_bytes;
    const uint8_t* const v_tile = k_tile + tile * lay.row_bytes;
    const int n = min(tile, range.end - (range.begin + it * tile));

    // Scores, a team per key; every lane runs every round (the shuffles need the whole warp).
    for (int j0 = 0; j0 < n; j0 += n_teams) {
      const int j = j0 + team;
      float kx[E];
      load_chunk<F16>(k_tile + j * lay.row_bytes + 16 * chunk, j < n && has_chunk, kx);
      float s[QH];
#pragma unroll
      for (int h = 0; h < QH; ++h) {
        s[h] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) s[h] += qv[h][e] * kx[e];
      }
      for (int offset = team_lanes / 2; offset > 0; offset /= 2) {
#pragma unroll
        for (int h = 0; h < QH; ++h) s[h] += __shfl_xor_sync(0xFFFFFFFFu, s[h], offset);
      }
      if (chunk == 0 && j < n) {
#pragma unroll
        for (int h = 0; h < QH; ++h) scores[h * tile + j] = s[h] * a.scale_log2;
      }
    }
    __syncthreads();

    // Online softmax, a warp per head: the tile's weights relative to the new maximum, and the factor for the sums
    // so far.
    for (int h = warp; h < QH; h += kWarps) {
      float* const s = scores + h * tile;
      float big = -INFINITY;
      for (int r = lane; r < n; r += 32) big = fmaxf(big, s[r]);
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) big = fmaxf(big, __shfl_xor_sync(0xFFFFFFFFu, big, offset));
      const float m_old = m_run[h], m_new = fmaxf(m_old, big);
      float sum = 0.0f;
      for (int r = lane; r < n; r += 32) {
        const float w = exp2f(s[r] - m_new);
        s[r] = w;
        sum += w;
      }
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
      if (lane == 0) {
        const float factor = exp2f(m_old - m_new);  // 0 on the first tile (m_old = -inf)
        rescale[h] = factor;
        l_run[h] = l_run[h] * factor + sum;
        m_run[h] = m_new;
      }
    }
    __syncthreads();

    // Weighted values: each lane its chunk of its team's keys.
#pragma unroll
    for (int h = 0; h < QH; ++h) {
      const float factor = rescale[h];
#pragma unroll
      for (int e = 0; e < E; ++e) acc[h][e] *= factor;
    }
    if (has_chunk) {
      for (int j = team; j < n; j += n_teams) {
        float vx[E];
        load_chunk<F16>(v_tile + j * lay.row_bytes + 16 * chunk, true, vx);
#pragma unroll
        for (int h = 0; h < QH; ++h) {
          const float w = scores[h * tile + j];
#pragma unroll
          for (int e = 0; e < E; ++e) acc[h][e] += w * vx[e];
        }
      }
    }
  }

  // The teams of a warp are team_lanes lanes apart; then the warps' sums meet in the stages' memory, which no copy
  // writes any more (every copy issued was waited for) once all threads are past the last tile.
  for (int offset = team_lanes; offset < 32; offset *= 2) {
#pragma unroll
    for (int h = 0; h < QH; ++h) {
#pragma unroll
      for (int e = 0; e < E; ++e) acc[h][e] += __shfl_xor_sync(0xFFFFFFFFu, acc[h][e], offset);
    }
  }
  __syncthreads();
  if (lane < team_lanes && has_chunk) {
#pragma unroll
    for (int h = 0; h < QH; ++h) {
#pragma unroll
      for (int e = 0; e < E; ++e) team_sums[(warp * QH + h) * hd + chunk * E + e] = acc[h][e];
    }
  }
  __syncthreads();
  for (int i = tid; i < QH * hd; i += kThreads) {
    const int h = i / hd, d = i % hd, head = h0 + h;
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) o += team_sums[(w * QH + h) * hd + d];
    if (n_splits == 1) {
      const float l = l_run[h], value = l > 0.0f ? o / l : 0.0f;
      const int64_t at = token * q_dim + static_cast<int64_t>(head) * hd + d;
      a.out[at] = value;
      if (a.out16) a.out16[at] = __float2half_rn(value);
    } else {
      float* const part = a.partials + ((static_cast<int64_t>(token) * a.n_head + head) * n_splits + split) * (hd + 2);
      part[d] = o;
      if (d == 0) {
        part[hd] = m_run[h];
        part[hd + 1] = l_run[h];
      }
    }
  }
}

// One block per (token, head): the splits' partial sums rescaled to their common maximum.
__global__ void __launch_bounds__(kCombineThreads)
    combine_splits_kernel(int n_head, int head_dim, int n_splits, const float* __restrict__ partials,
                          float* __restrict__ out, __half* __restrict__ out16) {
  allow_next_kernel();
  wait_for_previous_kernel();
  const int token = blockIdx.x, head = blockIdx.y, hd = head_dim;
  const float* const parts = partials + (static_cast<int64_t>(token) * n_head + head) * n_splits * (hd + 2);
  float big = -INFINITY;
  for (int s = 0; s < n_splits; ++s) big = fmaxf(big, parts[s * (hd + 2) + hd]);
  for (int d = threadIdx.x; d < hd; d += kCombineThreads) {
    float sum = 0.0f, o = 0.0f;
    for (int s = 0; s < n_splits; ++s) {
      const float* const part = parts + s * (hd + 2);
      if (part[hd] == -INFINITY) continue;  // a split without keys
      const float factor = exp2f(part[hd] - big);
      sum += part[hd + 1] * factor;
      o += part[d] * factor;
    }
    const float value = sum > 0.0f ? o / sum : 0.0f;
    const int64_t at = (static_cast<int64_t>(token) * n_head + head) * hd + d;
    out[at] = value;
    if (out16) out16[at] = __float2half_rn(value);
  }
}

template <int QH, bool F16>
void set_shared_limit() {
  static const bool configured = [] {
    int device = 0, limit = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
               "cudaDeviceGetAttribute(cudaDevAttrMaxSharedMemoryPerBlockOptin)");
    check_cuda(
        cudaFuncSetAttribute(paged_attention_kernel<QH, F16>, cudaFuncAttributeMaxDynamicSharedMemorySize, limit),
        "cudaFuncSetAttribute(paged_attention_kernel)");
    return true;
  }();
  (void)configured;
}

// f.template operator()<QH, F16>() for p's heads per block and cache type.
template <class F>
void dispatch_instance(const AttentionParams& p, F&& f) {
  const bool f16 = (p.k_format == KvFormat::F16);
  switch (heads_per_block(p)) {
    case 8:
      return f16 ? f.template operator()<8, true>() : f.template operator()<8, false>();
    case 4:
      return f16 ? f.template operator()<4, true>() : f.template operator()<4, false>();
    case 2:
      return f16 ? f.template operator()<2, true>() : f.template operator()<2, false>();
    default:
      return f16 ? f.template operator()<1, true>() : f.template operator()<1, false>();
  }
}

struct Prepare {
  template <int QH, bool F16>
  void operator()() const {
    set_shared_limit<QH, F16>();
  }
};

struct Launch {
  const PagedArgs& args;
  dim3 grid;
  cudaStream_t stream;
  template <int QH, bool F16>
  void operator()() const {
    set_shared_limit<QH, F16>();
    launch_chained("paged_attention_kernel", paged_attention_kernel<QH, F16>, grid, dim3(kThreads),
                   static_cast<size_t>(args.layout.total), stream, args);
  }
};

int block_shift_of(int block_size) {
  int shift = 0;
  while ((1 << shift) < block_size) ++shift;
  return shift;
}

}  // namespace

bool paged_attention_supported(const AttentionParams& p) {
  const int row_bytes = row_bytes_of(p);
  const bool plain = (p.k_format == KvFormat::F16 || p.k_format == KvFormat::F32) && p.v_format == p.k_format;
  return plain && p.n_head > 0 && p.n_head_kv > 0 && p.n_head % p.n_head_kv == 0 && p.head_dim > 0 && row_bytes % 16 == 0 &&
         row_bytes <= kMaxRowBytes;
}

int plan_paged_attention_splits(const AttentionParams& p, int n_tokens, int max_keys, int sm_count) {
  const int64_t blocks = static_cast<int64_t>(n_tokens) * p.n_head_kv * (p.n_head / p.n_head_kv / heads_per_block(p));
  int splits = 1;
  while (splits < kMaxSplits && blocks * splits < 2 * static_cast<int64_t>(sm_count) &&
         max_keys >= 2 * splits * kMinKeysPerSplit) {
    splits *= 2;
  }
  return splits;
}

int paged_attention_splits(const AttentionParams& p, int n_tokens, int max_keys) {
  return plan_paged_attention_splits(p, n_tokens, max_keys, current_device_limits().sm_count);
}

size_t paged_attention_workspace_floats(const AttentionParams& p, int n_tokens, int n_splits) {
  if (n_splits <= 1) return 0;
  return static_cast<size_t>(n_tokens) * p.n_head * n_splits * (p.head_dim + 2);
}

void paged_attention_prepare(const AttentionParams& p) {
  if (paged_attention_supported(p)) dispatch_instance(p, Prepare{});
}

void paged_attention(const AttentionParams& p, const float* q, const void* k_cache, const void* v_cache,
                     const PagedKeys& keys, int n_tokens, int n_splits, float* workspace, float* out, __half* out16,
                     cudaStream_t stream) {
  if (n_tokens <= 0) return;
  if (!paged_attention_supported(p)) {
    throw std::runtime_error("paged_attention: " + std::to_string(p.n_head) + "/" + std::to_string(p.n_head_kv) +
                             " heads of dimension " + std::to_string(p.head_dim) + " are not supported");
  }
  if (keys.block_size <= 0 || (keys.block_size & (keys.block_size - 1)) != 0) {
    throw std::runtime_error("paged_attention: the block size " + std::to_string(keys.block_size) +
                             " is not a power of two");
  }
  if (n_splits < 1 || n_splits > 65535) throw std::runtime_error("paged_attention: bad split count");
  if (n_splits > 1 && workspace == nullptr) throw std::runtime_error("paged_attention: splits need a workspace");
  const PagedLayout layout = choose_layout(p, current_device_limits());
  if (layout.total == 0) throw std::runtime_error("paged_attention: the tiles do not fit in shared memory");

  PagedArgs args{};
  args.q = q;
  args.k_cache = static_cast<const uint8_t*>(k_cache);
  args.v_cache = static_cast<const uint8_t*>(v_cache);
  args.keys = keys;
  args.block_shift = block_shift_of(keys.block_size);
  args.n_head = p.n_head;
  args.n_head_kv = p.n_head_kv;
  args.head_dim = p.head_dim;
  args.chunks = layout.row_bytes / 16;
  args.lanes_per_key = 1;
  while (args.lanes_per_key < args.chunks) args.lanes_per_key *= 2;
  args.scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(p.head_dim)));
  args.layout = layout;
  args.partials = workspace;
  args.out = out;
  args.out16 = out16;
  const int head_blocks = p.n_head / p.n_head_kv / heads_per_block(p);
  const dim3 grid(static_cast<unsigned>(n_tokens), static_cast<unsigned>(p.n_head_kv * head_blocks),
                  static_cast<unsigned>(n_splits));
  dispatch_instance(p, Launch{args, grid, stream});
  if (n_splits > 1) {
    launch_chained("combine_splits_kernel", combine_splits_kernel, dim3(static_cast<unsigned>(n_tokens), p.n_head),
                   dim3(kCombineThreads), 0, stream, p.n_head, p.head_dim, n_splits,
                   static_cast<const float*>(workspace), out, out16);
  }
}

}  // namespace tessera::cuda
