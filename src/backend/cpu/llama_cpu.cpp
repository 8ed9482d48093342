#include "backend/cpu/llama_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

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

GgmlType block_type(KvFormat format) { return format == KvFormat::Q8_0 ? GgmlType::Q8_0 : GgmlType::Q4_0; }

// n values stored in `format` (one or more rows) -> f32.
void kv_to_f32(KvFormat format, const uint8_t* src, float* dst, int64_t n) {
  switch (format) {
    case KvFormat::F16: f16_to_f32(reinterpret_cast<const uint16_t*>(src), dst, n); return;
    case KvFormat::F32: std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); return;
    case KvFormat::BF16: {
      const auto* h = reinterpret_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = quant::bf16_to_fp32(h[i]);
      return;
    }
    case KvFormat::Q8_0:
    case KvFormat::Q4_0: quant::dequantize_row(block_type(format), src, dst, n); return;
  }
}

// n f32 values -> `format`. Q8_0 rounds as llama.cpp's CPU code does when it writes a q8_0 cache (its activation
// quantizer); Q4_0 as its reference quantizer, which is what it uses for q4_0.
void f32_to_kv(KvFormat format, const float* src, uint8_t* dst, int64_t n) {
  switch (format) {
    case KvFormat::F16: f32_to_f16(src, reinterpret_cast<uint16_t*>(dst), n); return;
    case KvFormat::F32: std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); return;
    case KvFormat::BF16: {
      auto* h = reinterpret_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) h[i] = quant::fp32_to_bf16(src[i]);
      return;
    }
    case KvFormat::Q8_0: quant::quantize_activations(GgmlType::Q8_0, src, dst, n); return;
    case KvFormat::Q4_0: quant::quantize_row(GgmlType::Q4_0, src, dst, n); return;
  }
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
  for (KvFormat format : {kv_format_.k, kv_format_.v}) {
    const std::string why = kv_format_unsupported(format, model.config.head_dim, model.config.n_head_kv);
    if (!why.empty()) throw std::runtime_error(why);
  }
  k_layout_ = cache_layout(kv_format_.k);
  v_layout_ = cache_layout(kv_format_.v);
  kv_buffer_ = HugePageBuffer((k_layout_.layer_bytes + v_layout_.layer_bytes) *
                              static_cast<size_t>(last_layer_ - first_layer_));
  std::memset(kv_buffer_.data(), 0, kv_buffer_.size());
  scratch_.resize(pool_.size());
  query_q8_.resize(pool_.size());

  std::vector<const model::MatrixView*> matrices;
  for (int il = first_layer_; il < last_layer_; ++il) {
    for (const model::MatrixView* m : model_.layers[il].matrices()) matrices.push_back(m);
  }
  // A tied output matrix is also the embedding table, whose rows are read in GGUF layout.
  if (last_layer_ == model_.config.n_layer && !model_.tied_embeddings) matrices.push_back(&model_.output);
  matmul_.interleave(matrices, model_.file);
}

LlamaCpu::CacheLayout LlamaCpu::cache_layout(KvFormat format) const {
  const model::LlamaConfig& c = model_.config;
  CacheLayout l;
  l.format = format;
  l.heads_per_row = kv_heads_per_block_row(format, c.head_dim);
  l.row_values = l.heads_per_row * c.head_dim;
  l.row_bytes = kv_row_bytes(format, l.row_values);
  l.layer_bytes = static_cast<size_t>(n_slots_) * (c.n_head_kv / l.heads_per_row) * l.row_bytes;
  return l;
}

void LlamaCpu::embed(std::span<const int32_t> tokens, float* x) {
  const model::MatrixView& e = model_.token_embd;
  pool_.parallel_for(static_cast<int64_t>(tokens.size()), [&](int64_t t, int) {
    quant::dequantize_row(e.type, e.row(tokens[t]), x + t * e.n_cols, e.n_cols);
  });
}

void LlamaCpu::copy_kv_blocks(std::span<const KvBlockCopy> copies) {
  // Head-major: a block of one row of heads is one run of block_size rows.
  const int n_blocks = n_slots_ / block_size_;
  for (const KvBlockCopy& copy : copies) {
    if (copy.from < 0 || copy.from >= n_blocks || copy.to < 0 || copy.to >= n_blocks) {
      throw std::runtime_error("KV block copy " + std::to_string(copy.from) + " -> " + std::to_string(copy.to) +
                               " is outside the cache of " + std::to_string(n_blocks) + " blocks");
    }
    for (int il = first_layer_; il < last_layer_; ++il) {
      for (const auto& [cache, l] : {std::pair{k_cache(il), &k_layout_}, std::pair{v_cache(il), &v_layout_}}) {
        for (int h = 0; h < model_.config.n_head_kv; h += l->heads_per_row) {
          std::memcpy(row_at(cache, *l, h, copy.to * block_size_), row_at(cache, *l, h, copy.from * block_size_),
                      block_size_ * l->row_bytes);
        }
      }
    }
  }
}

void LlamaCpu::shift_kv(const KvShift& shift) {
  const model::LlamaConfig& c = model_.config;
  for (const KvSlotCopy& copy : shift.slot_copies) {
    for (int il = first_layer_; il < last_layer_; ++il) {
      for (const auto& [cache, l] : {std::pair{k_cache(il), &k_layout_}, std::pair{v_cache(il), &v_layout_}}) {
        for (int h = 0; h < c.n_head_kv; h += l->heads_per_row) {
          std::memcpy(row_at(cache, *l, h, copy.to), row_at(cache, *l, h, copy.from), l->row_bytes);
        }
      }
    }
  }
  // A key stored at position p is R(p) k; turning it by the angles of delta makes it R(p + delta) k.
  const RopeAngles angles = rope_angles(c.rope, shift.delta);
  const int64_t n_slots = static_cast<int64_t>(shift.rotated_slots.size());
  pool_.parallel_for(n_slots * (last_layer_ - first_layer_), [&](int64_t task, int thread) {
    const int il = first_layer_ + static_cast<int>(task / n_slots);
    const int32_t slot = shift.rotated_slots[task % n_slots];
    std::vector<float>& key = scratch_[thread];
    grow(key, static_cast<size_t>(k_layout_.row_values));
    for (int h = 0; h < c.n_head_kv; h += k_layout_.heads_per_row) {
      uint8_t* row = row_at(k_cache(il), k_layout_, h, slot);
      kv_to_f32(k_layout_.format, row, key.data(), k_layout_.row_values);
      apply_rope(key.data(), k_layout_.heads_per_row, c.head_dim, angles);
      f32_to_kv(k_layout_.format, key.data(), row, k_layout_.row_values);
    }
  });
}

void LlamaCpu::store_kv(int il, const StepPlan& plan) {
  const model::LlamaConfig& c = model_.config;
  const int kv_dim = c.kv_dim();
  pool_.parallel_for(plan.n_tokens(), [&](int64_t t, int) {
    apply_rope(q_.data() + t * c.q_dim(), c.n_head, c.head_dim, rope_[t]);
    apply_rope(k_.data() + t * kv_dim, c.n_head_kv, c.head_dim, rope_[t]);
    const int32_t slot = plan.write_slots[t];
    // A row's heads are consecutive in k and v.
    for (int h = 0; h < c.n_head_kv; h += k_layout_.heads_per_row) {
      f32_to_kv(k_layout_.format, k_.data() + t * kv_dim + h * c.head_dim, row_at(k_cache(il), k_layout_, h, slot),
                k_layout_.row_values);
    }
    for (int h = 0; h < c.n_head_kv; h += v_layout_.heads_per_row) {
      f32_to_kv(v_layout_.format, v_.data() + t * kv_dim + h * c.head_dim, row_at(v_cache(il), v_layout_, h, slot),
                v_layout_.row_values);
    }
  });
}

void LlamaCpu::attention(int il, const StepPlan& plan) {
  const model::LlamaConfig& c = model_.config;
  const int hd = c.head_dim, group = c.n_head / c.n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // ggml's f16 rounding of the query and the softmax weights (what llama.cpp's goldens hold) goes with f16 keys
  // and values; quantized keys meet a quantized query instead.
  const bool f16 = kv_format_.k == KvFormat::F16 && kv_format_.v == KvFormat::F16;
  const bool quantized_keys = kv_format_is_quantized(kv_format_.k);
  const GgmlType key_type = block_type(kv_format_.k);
  const int k_row_values = k_layout_.row_values, v_row_values = v_layout_.row_values;
  const size_t query_row_bytes = quantized_keys ? quant::activation_row_bytes(key_type, k_row_values) : 0;

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
    const int n_rows = static_cast<int>(b.t1 - b.t0) * group;  // query rows: token-major, then head
    const int64_t first_query = b.t0 * c.q_dim() + static_cast<int64_t>(h) * group * hd;
    // Scratch: the keys' rows as f32 (not for quantized keys), the values' rows as f32, then attend_block's
    // scratch or the scores of the quantized keys; also a query row padded to a key row.
    // The keys take the values' row stride (AttentionBlock has one), which is wider where the values' blocks
    // span heads and the keys' rows do not.
    const int64_t key_floats = quantized_keys ? 0 : static_cast<int64_t>(n_keys) * v_row_values;
    const int64_t value_floats = static_cast<int64_t>(n_keys) * v_row_values;
    const int64_t score_stride = scored_attention_stride(n_keys);
    const size_t tail = quantized_keys ? static_cast<size_t>(scored_attention_rows(n_rows) * score_stride)
                                       : attend_block_scratch_floats(n_keys, hd);
    std::vector<float>& s = scratch_[thread];
    grow(s, static_cast<size_t>(key_floats + value_floats + k_row_values) + tail);
    float* keys = s.data();
    float* values = keys + key_floats;
    float* padded_query = values + value_floats;
    float* after_values = padded_query + k_row_values;
    std::vector<uint8_t>& query_q8 = query_q8_[thread];
    if (quantized_keys) {
      // Each query row as a key row with zeros for the other heads of the row: the block dot products then sum
      // this head's products only.
      const int offset = k_layout_.offset_in_row(h, hd);
      std::fill_n(padded_query, k_row_values, 0.0f);
      grow(query_q8, static_cast<size_t>(n_rows) * query_row_bytes);
      for (int r = 0; r < n_rows; ++r) {
        const float* query = q_.data() + first_query + (r / group) * c.q_dim() + static_cast<int64_t>(r % group) * hd;
        std::copy_n(query, hd, padded_query + offset);
        quant::quantize_activations(key_type, padded_query, query_q8.data() + r * query_row_bytes, k_row_values);
      }
    }
    // Positions [begin, end) of the sequence, from key row `row` on. Keys in consecutive slots (a KV block's,
    // head-major; or adjacent blocks) are one run, read in one call: a call per key cost more than its copy.
    auto gather = [&](int32_t begin, int32_t end, int64_t row) {
      for (int32_t j = begin; j < end;) {
        const int32_t first_slot = plan.slot(run, j);
        int32_t n = std::min(end - j, plan.block_size - j % plan.block_size);
        while (j + n < end && plan.slot(run, j + n) == first_slot + n) {
          n += std::min(end - j - n, plan.block_size);
        }
        // The weights streamed since this layer's last step have evicted the cache rows: ask for the next run's
        // first keys ahead of use (the hardware prefetcher follows a run once it has started).
        if (j + n < end) {
          const int32_t next = plan.slot(run, j + n);
          const size_t ahead_rows = static_cast<size_t>(std::min(kGatherAhead, n_slots_ - next));
          const uint8_t* k_ahead = row_at(k_cache(il), k_layout_, h, next);
          const uint8_t* v_ahead = row_at(v_cache(il), v_layout_, h, next);
          for (size_t line = 0; line < ahead_rows * k_layout_.row_bytes; line += 64) __builtin_prefetch(k_ahead + line);
          for (size_t line = 0; line < ahead_rows * v_layout_.row_bytes; line += 64) __builtin_prefetch(v_ahead + line);
        }
        const uint8_t* k_run = row_at(k_cache(il), k_layout_, h, first_slot);
        const uint8_t* v_run = row_at(v_cache(il), v_layout_, h, first_slot);
        if (quantized_keys) {
          // scores[r][row + i] = (query row r) . (key i of the run), integer dot products block by block.
          quant::gemm(key_type, k_run, k_layout_.row_bytes, k_row_values, 0, n, query_q8.data(), query_row_bytes,
                      n_rows, after_values + row, score_stride);
        } else if (k_row_values == v_row_values) {
          kv_to_f32(k_layout_.format, k_run, keys + row * k_row_values, static_cast<int64_t>(n) * k_row_values);
        } else {
          for (int32_t i = 0; i < n; ++i) {
            kv_to_f32(k_layout_.format, k_run + i * k_layout_.row_bytes, keys + (row + i) * v_row_values,
                      k_row_values);
          }
        }
        kv_to_f32(v_layout_.format, v_run, values + row * v_row_values, static_cast<int64_t>(n) * v_row_values);
        j += n;
        row += n;
      }
    };
    gather(0, b.sink_end, 0);
    gather(b.window_begin, b.max_pos + 1, b.sink_end);
    int32_t token_keys[kAttentionTokenBlock];
    for (int64_t t = b.t0; t < b.t1; ++t) token_keys[t - b.t0] = b.sink_end + plan.positions[t] + 1 - b.window_begin;
    // Keys and values as rows of their layouts, from this head's values in them on.
    const AttentionBlock block{q_.data() + first_query,
                               attn_.data() + first_query,
                               c.q_dim(),
                               static_cast<int>(b.t1 - b.t0),
                               group,
                               token_keys,
                               keys + k_layout_.offset_in_row(h, hd),
                               values + v_layout_.offset_in_row(h, hd),
                               v_row_values,
                               hd,
                               scale,
                               f16};
    if (quantized_keys) {
      attend_block_scored(block, after_values, score_stride);
    } else {
      attend_block(block, after_values);
    }
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

  void shift(std::span<const KvBlockCopy> copies, const KvShift& shift) override {
    llama_.copy_kv_blocks(copies);
    llama_.shift_kv(shift);
  }

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
