#include "backend/cpu/llama_cpu.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "backend/cpu/attention.h"
#include "backend/cpu/f16_convert.h"
#include "backend/cpu/ops.h"
#include "quant/interleaved.h"
#include "quant/quant.h"

namespace tessera::cpu {
namespace {

constexpr int64_t kAttentionTokenBlock = 32;  // query tokens that share one gather of their sequence's K/V
constexpr int64_t kGemmTokenBlock = 64;       // activation rows per kernel call: they stay in L2 with the weights
constexpr int64_t kSwigluPiece = 256;         // SwiGLU values quantized together: whole blocks of any format
constexpr int kGatherAhead = 8;               // keys whose cache lines the K/V gather asks for ahead of use
// The smallest claim of rows (RowRanges) in weight bytes: a claim's own cost (its bookkeeping and a kernel call)
// stays small beside its reading. TinyLlama decode, alternating blocks of 32 tokens, 16 rounds each against the
// earlier chunk list: 32 KB +3.9% +- 0.9%, 64 KB +3.3% +- 0.8%; claims of a fixed size did worse (32 KB -2.8%).
constexpr int64_t kMinClaimBytes = 32 << 10;

template <class T>
void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

LlamaCpu::LlamaCpu(const model::LlamaModel& model, const BackendOptions& options, int first_layer, int last_layer)
    : model_(model),
      kv_type_(options.kv_type),
      n_slots_(options.n_kv_slots),
      first_layer_(first_layer),
      last_layer_(last_layer),
      pool_(options.n_threads > 0 ? options.n_threads : physical_core_count()) {
  const size_t elem = kv_type_ == KvCacheType::F16 ? 2 : 4;
  kv_layer_bytes_ = static_cast<size_t>(n_slots_) * model.config.kv_dim() * elem;
  kv_buffer_ = HugePageBuffer(2 * kv_layer_bytes_ * static_cast<size_t>(last_layer_ - first_layer_));
  std::memset(kv_buffer_.data(), 0, kv_buffer_.size());
  scratch_.resize(pool_.size());
  interleave_weights();
}

void LlamaCpu::interleave_weights() {
  std::vector<const model::MatrixView*> matrices;
  for (int il = first_layer_; il < last_layer_; ++il) {
    const model::LlamaLayer& w = model_.layers[il];
    for (const model::MatrixView* m : {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down}) matrices.push_back(m);
  }
  // A tied output matrix is also the embedding table, whose rows are read in GGUF layout.
  if (last_layer_ == model_.config.n_layer && !model_.tied_embeddings) matrices.push_back(&model_.output);
  // One buffer for all of them: huge pages are only worth it without a partly used page per matrix.
  std::vector<std::pair<const model::MatrixView*, size_t>> placed;  // matrix, offset in the buffer
  size_t total = 0;
  for (const model::MatrixView* m : matrices) {
    if (!quant::interleaved_available(m->type, m->n_rows, m->n_cols)) continue;
    placed.emplace_back(m, total);
    total += (quant::interleaved_bytes(m->type, m->n_rows, m->n_cols) + 63) / 64 * 64;
  }
  if (placed.empty()) return;
  interleaved_buffer_ = HugePageBuffer(total);
  for (const auto& [m, offset] : placed) {
    uint8_t* packed = interleaved_buffer_.data() + offset;
    pool_.parallel_for(m->n_rows / quant::kInterleavedRows, [&](int64_t g, int) {
      quant::interleave_rows(m->type, m->data, m->row_bytes, m->n_cols, g * quant::kInterleavedRows,
                             (g + 1) * quant::kInterleavedRows, packed);
    });
    if (model_.file) model_.file->release_pages(m->data, m->bytes());
    interleaved_.emplace(m, packed);
  }
}

uint64_t LlamaCpu::kv_cache_bytes() const { return kv_buffer_.size(); }

void LlamaCpu::embed(std::span<const int32_t> tokens, float* x) {
  const model::MatrixView& e = model_.token_embd;
  for (int32_t tok : tokens) {
    if (tok < 0 || tok >= e.n_rows) throw std::runtime_error("token id " + std::to_string(tok) + " is out of range");
  }
  pool_.parallel_for(static_cast<int64_t>(tokens.size()), [&](int64_t t, int) {
    quant::dequantize_row(e.type, e.row(tokens[t]), x + t * e.n_cols, e.n_cols);
  });
}

LlamaCpu::Resolved LlamaCpu::resolve(const MatmulJob& job, const uint8_t* xq, size_t xq_row_bytes) const {
  const auto interleaved = interleaved_.find(job.w);
  return {job.w, job.y, interleaved == interleaved_.end() ? nullptr : interleaved->second, xq, xq_row_bytes};
}

size_t LlamaCpu::prepare(std::initializer_list<MatmulJob> jobs, const float* x, int64_t n_tokens,
                         std::array<Resolved, kMaxMatmulJobs>& resolved) {
  // Quantize x once for each distinct activation format the weights need (at most one per job).
  struct Prepared {
    GgmlType weight_type;  // a weight type that needs this activation format
    GgmlType act_type;
    size_t row_bytes;
    size_t offset;
  };
  if (jobs.size() > kMaxMatmulJobs) throw std::logic_error("LlamaCpu::matmuls: too many jobs");
  std::array<Prepared, kMaxMatmulJobs> prepared;
  std::array<size_t, kMaxMatmulJobs> job_input;
  size_t n_prepared = 0, n_jobs = 0, total = 0;
  const int64_t n_cols = jobs.begin()->w->n_cols;
  for (const MatmulJob& job : jobs) {
    const GgmlType act = quant::activation_type(job.w->type);
    size_t p = 0;
    while (p < n_prepared && prepared[p].act_type != act) ++p;
    if (p == n_prepared) {
      const size_t rb = quant::activation_row_bytes(job.w->type, n_cols);
      prepared[n_prepared++] = {job.w->type, act, rb, total};
      total += rb * n_tokens;
    }
    job_input[n_jobs++] = p;
  }
  grow(xq_, total);
  pool_.parallel_for(static_cast<int64_t>(n_prepared) * n_tokens, [&](int64_t task, int) {
    const Prepared& p = prepared[task / n_tokens];
    const int64_t t = task % n_tokens;
    quant::quantize_activations(p.weight_type, x + t * n_cols, xq_.data() + p.offset + t * p.row_bytes, n_cols);
  });
  size_t j = 0;
  for (const MatmulJob& job : jobs) {
    const Prepared& p = prepared[job_input[j]];
    resolved[j++] = resolve(job, xq_.data() + p.offset, p.row_bytes);
  }
  return n_jobs;
}

void LlamaCpu::multiply_rows(const Resolved& job, int64_t row_begin, int64_t row_end, int64_t n_tokens) {
  const model::MatrixView& w = *job.w;
  for (int64_t t0 = 0; t0 < n_tokens; t0 += kGemmTokenBlock) {
    const int64_t nt = std::min(kGemmTokenBlock, n_tokens - t0);
    float* y = job.y + t0 * w.n_rows;
    const uint8_t* xq = job.xq + t0 * job.xq_row_bytes;
    if (job.interleaved) {
      quant::gemm_interleaved(w.type, job.interleaved, w.n_cols, row_begin, row_end, xq, job.xq_row_bytes, nt, y,
                              w.n_rows);
    } else {
      quant::gemm(w.type, w.data, w.row_bytes, w.n_cols, row_begin, row_end, xq, job.xq_row_bytes, nt, y, w.n_rows);
    }
  }
}

template <class OnClaim>
void LlamaCpu::for_each_claim(std::span<const int64_t> job_rows, size_t row_bytes, const OnClaim& on_claim) {
  ranges_.reset(job_rows, quant::kInterleavedRows, pool_.size(),
                std::max<int64_t>(1, kMinClaimBytes / static_cast<int64_t>(row_bytes * quant::kInterleavedRows)));
  pool_.parallel_for(pool_.size(), [&](int64_t part, int) {
    RowRanges::Claim claim;
    while (ranges_.next(static_cast<int>(part), claim)) on_claim(claim);
  });
}

void LlamaCpu::run_matmuls(std::span<const Resolved> jobs, int64_t n_tokens) {
  std::array<int64_t, kMaxMatmulJobs> job_rows;
  for (size_t j = 0; j < jobs.size(); ++j) job_rows[j] = jobs[j].w->n_rows;
  for_each_claim(std::span(job_rows.data(), jobs.size()), jobs[0].w->row_bytes, [&](const RowRanges::Claim& claim) {
    multiply_rows(jobs[claim.job], claim.row_begin, claim.row_end, n_tokens);
  });
}

void LlamaCpu::matmuls(std::initializer_list<MatmulJob> jobs, const float* x, int64_t n_tokens) {
  std::array<Resolved, kMaxMatmulJobs> resolved;
  const size_t n_jobs = prepare(jobs, x, n_tokens, resolved);
  run_matmuls(std::span(resolved.data(), n_jobs), n_tokens);
}

void LlamaCpu::feed_forward(const model::LlamaLayer& w, const float* x, int64_t n_tokens) {
  const int64_t n_ff = w.w_gate.n_rows;
  const quant::SimdLevel level = quant::active_simd_level();
  if (n_tokens >= pool_.size()) {
    // Prompt rows: every thread has whole rows to apply SwiGLU to and to quantize.
    matmuls({{&w.w_gate, gate_.data()}, {&w.w_up, up_.data()}}, x, n_tokens);
    pool_.parallel_for(n_tokens, [&](int64_t t, int) {
      float* gate = gate_.data() + t * n_ff;
      swiglu_at(level, gate, up_.data() + t * n_ff, gate, n_ff);
    });
    matmuls({{&w.w_down, proj_.data()}}, gate_.data(), n_tokens);
    return;
  }
  // Fewer rows than threads (decode): the thread that completes a piece of kSwigluPiece gate and up rows applies
  // SwiGLU to it (into gate_) and quantizes it for the down projection. Neither needs a parallel loop of its
  // own, and no thread waits while another quantizes the row.
  std::array<Resolved, kMaxMatmulJobs> resolved;
  prepare({{&w.w_gate, gate_.data()}, {&w.w_up, up_.data()}}, x, n_tokens, resolved);
  const size_t down_row_bytes = quant::activation_row_bytes(w.w_down.type, n_ff);
  grow(swiglu_xq_, down_row_bytes * n_tokens);
  const int64_t n_pieces = (n_ff + kSwigluPiece - 1) / kSwigluPiece;
  if (static_cast<int64_t>(piece_rows_done_.size()) < n_pieces) {
    piece_rows_done_ = std::vector<std::atomic<int64_t>>(n_pieces);
  }
  for (int64_t p = 0; p < n_pieces; ++p) piece_rows_done_[p].store(0, std::memory_order_relaxed);
  const int64_t rows[] = {n_ff, n_ff};
  for_each_claim(rows, w.w_gate.row_bytes, [&](const RowRanges::Claim& claim) {
    multiply_rows(resolved[claim.job], claim.row_begin, claim.row_end, n_tokens);
    for (int64_t p = claim.row_begin / kSwigluPiece; p * kSwigluPiece < claim.row_end; ++p) {
      const int64_t begin = p * kSwigluPiece, end = std::min(n_ff, begin + kSwigluPiece);
      const int64_t mine = std::min(claim.row_end, end) - std::max(claim.row_begin, begin);
      // acq_rel: the thread that completes the piece sees the rows of it that other threads computed.
      if (piece_rows_done_[p].fetch_add(mine, std::memory_order_acq_rel) + mine != 2 * (end - begin)) continue;
      const size_t offset = quant::activation_row_bytes(w.w_down.type, begin);
      for (int64_t t = 0; t < n_tokens; ++t) {
        float* gate = gate_.data() + t * n_ff + begin;
        swiglu_at(level, gate, up_.data() + t * n_ff + begin, gate, end - begin);
        quant::quantize_activations(w.w_down.type, gate, swiglu_xq_.data() + t * down_row_bytes + offset, end - begin);
      }
    }
  });
  const Resolved down = resolve({&w.w_down, proj_.data()}, swiglu_xq_.data(), down_row_bytes);
  run_matmuls(std::span(&down, 1), n_tokens);
}

void LlamaCpu::store_kv(int il, const ForwardBatch& batch) {
  const model::LlamaConfig& c = model_.config;
  const int kv_dim = c.kv_dim();
  const int64_t n_tokens = static_cast<int64_t>(batch.tokens.size());
  pool_.parallel_for(n_tokens, [&](int64_t t, int) {
    apply_rope(q_.data() + t * c.q_dim(), c.n_head, c.head_dim, rope_[t]);
    apply_rope(k_.data() + t * kv_dim, c.n_head_kv, c.head_dim, rope_[t]);
    const int32_t slot = batch.sequences[batch.seq_index[t]].slots[batch.positions[t]];
    for (int h = 0; h < c.n_head_kv; ++h) {
      const float* k = k_.data() + t * kv_dim + h * c.head_dim;
      const float* v = v_.data() + t * kv_dim + h * c.head_dim;
      const int64_t at = kv_offset(h, slot);
      if (kv_type_ == KvCacheType::F16) {
        f32_to_f16(k, reinterpret_cast<uint16_t*>(k_cache(il)) + at, c.head_dim);
        f32_to_f16(v, reinterpret_cast<uint16_t*>(v_cache(il)) + at, c.head_dim);
      } else {
        std::memcpy(reinterpret_cast<float*>(k_cache(il)) + at, k, c.head_dim * sizeof(float));
        std::memcpy(reinterpret_cast<float*>(v_cache(il)) + at, v, c.head_dim * sizeof(float));
      }
    }
  });
}

void LlamaCpu::attention(int il, const ForwardBatch& batch) {
  const model::LlamaConfig& c = model_.config;
  const int hd = c.head_dim, group = c.n_head / c.n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const bool f16 = kv_type_ == KvCacheType::F16;

  // Runs of consecutive tokens of one sequence, cut into blocks that share one gather of K/V per KV head.
  struct Block {
    int64_t t0, t1;
    int32_t max_pos;
  };
  std::vector<Block> blocks;
  const int64_t n_tokens = static_cast<int64_t>(batch.tokens.size());
  for (int64_t t = 0; t < n_tokens; ++t) {
    if (blocks.empty() || batch.seq_index[t] != batch.seq_index[blocks.back().t0] ||
        blocks.back().t1 - blocks.back().t0 == kAttentionTokenBlock) {
      blocks.push_back({t, t, 0});
    }
    blocks.back().t1 = t + 1;
    blocks.back().max_pos = std::max(blocks.back().max_pos, batch.positions[t]);
  }

  pool_.parallel_for(static_cast<int64_t>(blocks.size()) * c.n_head_kv, [&](int64_t task, int thread) {
    const Block& b = blocks[task / c.n_head_kv];
    const int h = static_cast<int>(task % c.n_head_kv);
    const std::span<const int32_t> slots = batch.sequences[batch.seq_index[b.t0]].slots;
    const int n_keys = b.max_pos + 1;
    std::vector<float>& s = scratch_[thread];
    grow(s, static_cast<size_t>(n_keys) * hd * 2 + attend_block_scratch_floats(n_keys, hd));
    float* keys = s.data();
    float* values = keys + static_cast<int64_t>(n_keys) * hd;
    float* attend_scratch = values + static_cast<int64_t>(n_keys) * hd;
    const size_t elem = f16 ? 2 : 4;
    // Keys in consecutive slots (a KV block's, head-major) are one run, copied in one call: a call per key cost
    // more than its copy.
    for (int j = 0; j < n_keys;) {
      int run = 1;
      while (j + run < n_keys && slots[j + run] == slots[j] + run) ++run;
      const int64_t offset = kv_offset(h, slots[j]), n = static_cast<int64_t>(run) * hd;
      // The weights streamed since this layer's last step have evicted the cache rows: ask for the next run's
      // first keys ahead of use (the hardware prefetcher follows a run once it has started).
      if (j + run < n_keys) {
        const int32_t next = slots[j + run];
        const int64_t ahead = kv_offset(h, next) * elem;
        const size_t bytes = static_cast<size_t>(std::min(kGatherAhead, n_slots_ - next)) * hd * elem;
        for (size_t line = 0; line < bytes; line += 64) {
          __builtin_prefetch(k_cache(il) + ahead + line);
          __builtin_prefetch(v_cache(il) + ahead + line);
        }
      }
      if (f16) {
        f16_to_f32(reinterpret_cast<const uint16_t*>(k_cache(il)) + offset, keys + j * hd, n);
        f16_to_f32(reinterpret_cast<const uint16_t*>(v_cache(il)) + offset, values + j * hd, n);
      } else {
        std::memcpy(keys + j * hd, reinterpret_cast<const float*>(k_cache(il)) + offset, n * sizeof(float));
        std::memcpy(values + j * hd, reinterpret_cast<const float*>(v_cache(il)) + offset, n * sizeof(float));
      }
      j += run;
    }
    int32_t token_keys[kAttentionTokenBlock];
    for (int64_t t = b.t0; t < b.t1; ++t) token_keys[t - b.t0] = batch.positions[t] + 1;
    const int64_t first = b.t0 * c.q_dim() + static_cast<int64_t>(h) * group * hd;
    const AttentionBlock block{q_.data() + first, attn_.data() + first, c.q_dim(), static_cast<int>(b.t1 - b.t0),
                               group,             token_keys,           keys,      values,
                               hd,                hd,                   scale,     f16};
    attend_block(block, attend_scratch);
  });
}

void LlamaCpu::layer(int il, const ForwardBatch& batch, float* x, bool final_layer) {
  const model::LlamaConfig& c = model_.config;
  const model::LlamaLayer& w = model_.layers[il];
  const int64_t n_tokens = static_cast<int64_t>(batch.tokens.size());
  const int n_embd = c.n_embd;

  // Attention block: norm -> q, k, v -> RoPE, cache -> attention -> output projection -> residual.
  pool_.parallel_for(n_tokens, [&](int64_t t, int) {
    rms_norm(x + t * n_embd, w.attn_norm, norm_.data() + t * n_embd, n_embd, c.rms_eps);
  });
  matmuls({{&w.wq, q_.data()}, {&w.wk, k_.data()}, {&w.wv, v_.data()}}, norm_.data(), n_tokens);
  store_kv(il, batch);
  attention(il, batch);
  matmuls({{&w.wo, proj_.data()}}, attn_.data(), n_tokens);

  // After the final layer's attention only the rows whose logits are wanted matter.
  int64_t n_rows = n_tokens;
  if (final_layer) {
    n_rows = static_cast<int64_t>(batch.output_rows.size());
    for (int64_t r = 0; r < n_rows; ++r) {
      const int64_t t = batch.output_rows[r];
      for (int i = 0; i < n_embd; ++i) x[r * n_embd + i] = x[t * n_embd + i] + proj_[t * n_embd + i];
    }
  } else {
    for (int64_t i = 0; i < n_tokens * n_embd; ++i) x[i] += proj_[i];
  }
  if (n_rows == 0) return;

  // Feed-forward block: norm -> SwiGLU(gate, up) -> down -> residual.
  pool_.parallel_for(n_rows, [&](int64_t t, int) {
    rms_norm(x + t * n_embd, w.ffn_norm, norm_.data() + t * n_embd, n_embd, c.rms_eps);
  });
  feed_forward(w, norm_.data(), n_rows);
  for (int64_t i = 0; i < n_rows * n_embd; ++i) x[i] += proj_[i];
}

void LlamaCpu::run_layers(const ForwardBatch& batch, float* x, bool last_is_final) {
  const model::LlamaConfig& c = model_.config;
  const size_t n_tokens = batch.tokens.size();
  grow(norm_, n_tokens * c.n_embd);
  grow(q_, n_tokens * c.q_dim());
  grow(k_, n_tokens * c.kv_dim());
  grow(v_, n_tokens * c.kv_dim());
  grow(attn_, n_tokens * c.q_dim());
  grow(proj_, n_tokens * c.n_embd);
  grow(gate_, n_tokens * c.n_ff);
  grow(up_, n_tokens * c.n_ff);
  grow(rope_, n_tokens);
  pool_.parallel_for(static_cast<int64_t>(n_tokens),
                     [&](int64_t t, int) { rope_[t] = rope_angles(c.rope, batch.positions[t]); });
  for (int il = first_layer_; il < last_layer_; ++il) {
    layer(il, batch, x, last_is_final && il == last_layer_ - 1);
  }
}

void LlamaCpu::output(const float* x, int64_t n_rows, float* logits) {
  if (n_rows == 0) return;
  const model::LlamaConfig& c = model_.config;
  grow(norm_, static_cast<size_t>(n_rows) * c.n_embd);
  pool_.parallel_for(n_rows, [&](int64_t r, int) {
    rms_norm(x + r * c.n_embd, model_.output_norm, norm_.data() + r * c.n_embd, c.n_embd, c.rms_eps);
  });
  matmuls({{&model_.output, logits}}, norm_.data(), n_rows);
}

namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(const model::LlamaModel& model, const BackendOptions& options)
      : model_(model), llama_(model, options, 0, model.config.n_layer) {}

  std::string_view name() const override { return "cpu"; }
  std::string device() const override { return cpu_device_name(llama_.n_threads()); }
  uint64_t kv_cache_bytes() const override { return llama_.kv_cache_bytes(); }
  std::span<const uint8_t> streamed_host_weights() const override { return llama_.interleaved_weights(); }

  void forward(const ForwardBatch& batch, float* logits) override {
    const size_t n = batch.tokens.size() * static_cast<size_t>(model_.config.n_embd);
    if (x_.size() < n) x_.resize(n);
    llama_.embed(batch.tokens, x_.data());
    llama_.run_layers(batch, x_.data(), true);
    llama_.output(x_.data(), static_cast<int64_t>(batch.output_rows.size()), logits);
  }

 private:
  const model::LlamaModel& model_;
  LlamaCpu llama_;
  std::vector<float> x_;  // the residual stream, [n_tokens][n_embd]
};

}  // namespace
}  // namespace tessera::cpu

namespace tessera {

std::unique_ptr<Backend> make_cpu_backend(const model::LlamaModel& model, const BackendOptions& options) {
  return std::make_unique<cpu::CpuBackend>(model, options);
}

}  // namespace tessera
