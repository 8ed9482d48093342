#include "backend/cpu/llama_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "backend/cpu/attention.h"
#include "backend/cpu/f16_convert.h"
#include "backend/cpu/ops.h"
#include "quant/quant.h"
#include "util/cpu_info.h"

namespace tessera::cpu {
namespace {

constexpr int64_t kAttentionTokenBlock = 32;  // query tokens that share one gather of their sequence's K/V
constexpr int kGatherAhead = 8;               // keys whose cache lines the K/V gather asks for ahead of use

template <class T>
void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

LlamaCpu::LlamaCpu(const model::LlamaModel& model, const BackendOptions& options, int first_layer, int last_layer)
    : model_(model),
      kv_format_(options.kv_format),
      n_slots_(options.n_kv_slots),
      block_size_(options.kv_block_size),
      first_layer_(first_layer),
      last_layer_(last_layer),
      pool_(options.n_threads),
      matmul_(pool_) {
  kv_elem_bytes_ = kv_format_ == KvFormat::F16 ? 2 : 4;
  kv_layer_bytes_ = static_cast<size_t>(n_slots_) * model.config.kv_dim() * kv_elem_bytes_;
  kv_buffer_ = HugePageBuffer(2 * kv_layer_bytes_ * static_cast<size_t>(last_layer_ - first_layer_));
  std::memset(kv_buffer_.data(), 0, kv_buffer_.size());
  scratch_.resize(pool_.size());

  std::vector<const model::MatrixView*> matrices;
  for (int il = first_layer_; il < last_layer_; ++il) {
    for (const model::MatrixView* m : model_.layers[il].matrices()) matrices.push_back(m);
  }
  // A tied output matrix is also the embedding table, whose rows are read in GGUF layout.
  if (last_layer_ == model_.config.n_layer && !model_.tied_embeddings) matrices.push_back(&model_.output);
  matmul_.interleave(matrices, model_.file);
}

void LlamaCpu::embed(std::span<const int32_t> tokens, float* x) {
  const model::MatrixView& e = model_.token_embd;
  pool_.parallel_for(static_cast<int64_t>(tokens.size()), [&](int64_t t, int) {
    quant::dequantize_row(e.type, e.row(tokens[t]), x + t * e.n_cols, e.n_cols);
  });
}

void LlamaCpu::copy_kv_blocks(std::span<const KvBlockCopy> copies) {
  // Head-major: a block of one KV head is one run of block_size rows.
  const size_t run_bytes = static_cast<size_t>(block_size_) * model_.config.head_dim * kv_elem_bytes_;
  const int n_blocks = n_slots_ / block_size_;
  for (const KvBlockCopy& copy : copies) {
    if (copy.from < 0 || copy.from >= n_blocks || copy.to < 0 || copy.to >= n_blocks) {
      throw std::runtime_error("KV block copy " + std::to_string(copy.from) + " -> " + std::to_string(copy.to) +
                               " is outside the cache of " + std::to_string(n_blocks) + " blocks");
    }
    for (int il = first_layer_; il < last_layer_; ++il) {
      for (uint8_t* cache : {k_cache(il), v_cache(il)}) {
        for (int h = 0; h < model_.config.n_head_kv; ++h) {
          std::memcpy(cache + kv_offset(h, copy.to * block_size_) * kv_elem_bytes_,
                      cache + kv_offset(h, copy.from * block_size_) * kv_elem_bytes_, run_bytes);
        }
      }
    }
  }
}

void LlamaCpu::store_kv(int il, const StepPlan& plan) {
  const model::LlamaConfig& c = model_.config;
  const int kv_dim = c.kv_dim();
  pool_.parallel_for(plan.n_tokens(), [&](int64_t t, int) {
    apply_rope(q_.data() + t * c.q_dim(), c.n_head, c.head_dim, rope_[t]);
    apply_rope(k_.data() + t * kv_dim, c.n_head_kv, c.head_dim, rope_[t]);
    const int32_t slot = plan.write_slots[t];
    for (int h = 0; h < c.n_head_kv; ++h) {
      const float* k = k_.data() + t * kv_dim + h * c.head_dim;
      const float* v = v_.data() + t * kv_dim + h * c.head_dim;
      const int64_t at = kv_offset(h, slot);
      if (kv_format_ == KvFormat::F16) {
        f32_to_f16(k, reinterpret_cast<uint16_t*>(k_cache(il)) + at, c.head_dim);
        f32_to_f16(v, reinterpret_cast<uint16_t*>(v_cache(il)) + at, c.head_dim);
      } else {
        std::memcpy(reinterpret_cast<float*>(k_cache(il)) + at, k, c.head_dim * sizeof(float));
        std::memcpy(reinterpret_cast<float*>(v_cache(il)) + at, v, c.head_dim * sizeof(float));
      }
    }
  });
}

void LlamaCpu::attention(int il, const StepPlan& plan) {
  const model::LlamaConfig& c = model_.config;
  const int hd = c.head_dim, group = c.n_head / c.n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const bool f16 = kv_format_ == KvFormat::F16;

  // Tokens of one run, cut into blocks that share one gather of K/V per KV head. A block's keys are two ranges
  // of positions: [0, sink_end) and [window_begin, max_pos]. Its tokens see a prefix of them, so a token whose
  // window has moved past the sinks (it sees neither all earlier keys nor the same ones as its neighbours) is a
  // block of its own.
  struct Block {
    int64_t t0, t1;
    int32_t sink_end, window_begin, max_pos;
  };
  std::vector<Block> blocks;
  for (const StepPlan::Run& run : plan.runs) {
    for (int64_t t = run.token_begin; t < run.token_begin + run.n_tokens; ++t) {
      const int32_t p = plan.positions[t], first = run.first_visible(p);
      const bool sees_all = first <= run.n_sink;
      const bool joins = !blocks.empty() && sees_all && blocks.back().window_begin == 0 && blocks.back().t1 == t &&
                         plan.run_index[blocks.back().t0] == plan.run_index[t] &&
                         blocks.back().t1 - blocks.back().t0 < kAttentionTokenBlock;
      if (joins) {
        blocks.back().t1 = t + 1;
        blocks.back().max_pos = p;
      } else {
        blocks.push_back(sees_all ? Block{t, t + 1, 0, 0, p} : Block{t, t + 1, run.n_sink, first, p});
      }
    }
  }

  pool_.parallel_for(static_cast<int64_t>(blocks.size()) * c.n_head_kv, [&](int64_t task, int thread) {
    const Block& b = blocks[task / c.n_head_kv];
    const int h = static_cast<int>(task % c.n_head_kv);
    const StepPlan::Run& run = plan.runs[plan.run_index[b.t0]];
    const int n_keys = b.sink_end + (b.max_pos + 1 - b.window_begin);
    std::vector<float>& s = scratch_[thread];
    grow(s, static_cast<size_t>(n_keys) * hd * 2 + attend_block_scratch_floats(n_keys, hd));
    float* keys = s.data();
    float* values = keys + static_cast<int64_t>(n_keys) * hd;
    float* attend_scratch = values + static_cast<int64_t>(n_keys) * hd;
    // Copies positions [begin, end) of the sequence to row `row` on. Keys in consecutive slots (a KV block's,
    // head-major; or adjacent blocks) are one run, copied in one call: a call per key cost more than its copy.
    auto gather = [&](int32_t begin, int32_t end, int64_t row) {
      for (int32_t j = begin; j < end;) {
        const int32_t first_slot = plan.slot(run, j);
        int32_t n = std::min(end - j, plan.block_size - j % plan.block_size);
        while (j + n < end && plan.slot(run, j + n) == first_slot + n) {
          n += std::min(end - j - n, plan.block_size);
        }
        const int64_t offset = kv_offset(h, first_slot), count = static_cast<int64_t>(n) * hd;
        // The weights streamed since this layer's last step have evicted the cache rows: ask for the next run's
        // first keys ahead of use (the hardware prefetcher follows a run once it has started).
        if (j + n < end) {
          const int32_t next = plan.slot(run, j + n);
          const int64_t ahead = kv_offset(h, next) * static_cast<int64_t>(kv_elem_bytes_);
          const size_t bytes = static_cast<size_t>(std::min(kGatherAhead, n_slots_ - next)) * hd * kv_elem_bytes_;
          for (size_t line = 0; line < bytes; line += 64) {
            __builtin_prefetch(k_cache(il) + ahead + line);
            __builtin_prefetch(v_cache(il) + ahead + line);
          }
        }
        float* key_rows = keys + row * hd;
        float* value_rows = values + row * hd;
        if (f16) {
          f16_to_f32(reinterpret_cast<const uint16_t*>(k_cache(il)) + offset, key_rows, count);
          f16_to_f32(reinterpret_cast<const uint16_t*>(v_cache(il)) + offset, value_rows, count);
        } else {
          std::memcpy(key_rows, reinterpret_cast<const float*>(k_cache(il)) + offset, count * sizeof(float));
          std::memcpy(value_rows, reinterpret_cast<const float*>(v_cache(il)) + offset, count * sizeof(float));
        }
        j += n;
        row += n;
      }
    };
    gather(0, b.sink_end, 0);
    gather(b.window_begin, b.max_pos + 1, b.sink_end);
    int32_t token_keys[kAttentionTokenBlock];
    for (int64_t t = b.t0; t < b.t1; ++t) token_keys[t - b.t0] = b.sink_end + plan.positions[t] + 1 - b.window_begin;
    const int64_t first = b.t0 * c.q_dim() + static_cast<int64_t>(h) * group * hd;
    const AttentionBlock block{q_.data() + first, attn_.data() + first, c.q_dim(), static_cast<int>(b.t1 - b.t0),
                               group,             token_keys,           keys,      values,
                               hd,                hd,                   scale,     f16};
    attend_block(block, attend_scratch);
  });
}

void LlamaCpu::layer(int il, const StepPlan& plan, float* x, bool final_layer) {
  const model::LlamaConfig& c = model_.config;
  const model::LlamaLayer& w = model_.layers[il];
  const int64_t n_tokens = plan.n_tokens();
  const int n_embd = c.n_embd;

  // Attention block: norm -> q, k, v -> RoPE, cache -> attention -> output projection -> residual.
  pool_.parallel_for(n_tokens, [&](int64_t t, int) {
    rms_norm(x + t * n_embd, w.attn_norm, norm_.data() + t * n_embd, n_embd, c.rms_eps);
  });
  matmul_.matmuls({{&w.wq, q_.data()}, {&w.wk, k_.data()}, {&w.wv, v_.data()}}, norm_.data(), n_tokens);
  store_kv(il, plan);
  attention(il, plan);
  matmul_.matmuls({{&w.wo, proj_.data()}}, attn_.data(), n_tokens);

  // After the final layer's attention only the rows whose logits are wanted matter.
  int64_t n_rows = n_tokens;
  if (final_layer) {
    n_rows = plan.n_outputs();
    for (int64_t r = 0; r < n_rows; ++r) {
      const int64_t t = plan.output_rows[r];
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
  matmul_.swiglu_feed_forward(w.w_gate, w.w_up, w.w_down, norm_.data(), n_rows, gate_.data(), up_.data(),
                              proj_.data());
  for (int64_t i = 0; i < n_rows * n_embd; ++i) x[i] += proj_[i];
}

void LlamaCpu::run_layers(const StepPlan& plan, float* x, bool last_is_final) {
  if (plan.block_size != block_size_ || plan.n_slots != n_slots_) {
    throw std::runtime_error("step plan: a KV cache of " + std::to_string(plan.n_slots) + " slots in blocks of " +
                             std::to_string(plan.block_size) + "; the CPU cache has " + std::to_string(n_slots_) +
                             " in blocks of " + std::to_string(block_size_));
  }
  const model::LlamaConfig& c = model_.config;
  const size_t n_tokens = plan.tokens.size();
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
                     [&](int64_t t, int) { rope_[t] = rope_angles(c.rope, plan.positions[t]); });
  for (int il = first_layer_; il < last_layer_; ++il) {
    layer(il, plan, x, last_is_final && il == last_layer_ - 1);
  }
}

void LlamaCpu::output(const float* x, int64_t n_rows, float* logits) {
  if (n_rows == 0) return;
  const model::LlamaConfig& c = model_.config;
  grow(norm_, static_cast<size_t>(n_rows) * c.n_embd);
  pool_.parallel_for(n_rows, [&](int64_t r, int) {
    rms_norm(x + r * c.n_embd, model_.output_norm, norm_.data() + r * c.n_embd, c.n_embd, c.rms_eps);
  });
  matmul_.matmuls({{&model_.output, logits}}, norm_.data(), n_rows);
}

namespace {

class CpuBackend final : public Backend, public HostWeightStream {
 public:
  CpuBackend(const model::LlamaModel& model, const BackendOptions& options)
      : model_(model), llama_(model, options, 0, model.config.n_layer) {}

  std::string_view name() const override { return "cpu"; }
  std::string device() const override { return util::cpu_device_name(llama_.n_threads()); }
  uint64_t kv_cache_bytes() const override { return llama_.kv_cache_bytes(); }
  std::span<const uint8_t> streamed_host_weights() const override { return llama_.interleaved_weights(); }

  void forward(std::span<const KvBlockCopy> copies, const StepPlan& plan, float* logits) override {
    llama_.copy_kv_blocks(copies);
    if (plan.n_tokens() == 0) return;
    const size_t n = plan.tokens.size() * static_cast<size_t>(model_.config.n_embd);
    if (x_.size() < n) x_.resize(n);
    llama_.embed(plan.tokens, x_.data());
    llama_.run_layers(plan, x_.data(), true);
    llama_.output(x_.data(), plan.n_outputs(), logits);
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
