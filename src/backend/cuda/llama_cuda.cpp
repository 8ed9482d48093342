#include "backend/cuda/llama_cuda.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_layout.h"

namespace tessera::cuda {
namespace {

constexpr size_t kAlign = 256;
constexpr int kInitialCapacity = 512;  // tokens per step before the buffers grow (the engine's default n_batch)
constexpr int kMaxSplits = 32;
constexpr uint64_t kHeadroomBytes = 256ull << 20;  // cuBLAS workspace, graphs, the CUDA context's own needs
constexpr size_t kStagingBytes = 8u << 20;          // host buffer for weights rewritten into the device layout

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
double mib(uint64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

// Lays out buffers in one allocation: first pass counts, second hands out pointers.
class Layout {
 public:
  size_t add(size_t bytes) {
    const size_t offset = size_;
    size_ = align_up(size_ + bytes);
    return offset;
  }
  size_t size() const { return size_; }

 private:
  size_t size_ = 0;
};

void check_matrix(const model::MatrixView& m) {
  if (!supports_type(m.type)) {
    throw std::runtime_error(
        fmt::format("tensor '{}' has type {}, which the CUDA backend cannot multiply", m.name, ggml_type_name(m.type)));
  }
  if (m.n_cols % column_granule(m.type) != 0) {
    throw std::runtime_error(fmt::format("tensor '{}' has {} columns; the CUDA kernels for {} need a multiple of {}",
                                         m.name, m.n_cols, ggml_type_name(m.type), column_granule(m.type)));
  }
}

}  // namespace

LlamaCuda::LlamaCuda(const model::LlamaModel& model, const BackendOptions& options, int n_layers, bool with_output)
    : model_(model),
      config_(model.config),
      n_layers_(n_layers),
      with_output_(with_output),
      f16_cache_(options.kv_type == KvCacheType::F16),
      n_slots_(options.n_kv_slots) {
  const char* graphs_env = std::getenv("TESSERA_CUDA_GRAPHS");
  use_graphs_ = !(graphs_env && std::string(graphs_env) == "0");
  if (n_slots_ <= 0) throw std::runtime_error("the CUDA backend needs a KV cache of at least one slot");
  if (with_output && n_layers != config_.n_layer) throw std::runtime_error("LlamaCuda: output needs every layer");

  int n_devices = 0;
  if (const cudaError_t err = cudaGetDeviceCount(&n_devices); err != cudaSuccess || n_devices == 0) {
    throw std::runtime_error(std::string("no CUDA GPU is available (") +
                             (err != cudaSuccess ? cudaGetErrorString(err) : "no devices found") +
                             "); use --backend cpu");
  }
  TESSERA_CUDA_CHECK(cudaSetDevice(0));
  cudaDeviceProp prop{};
  TESSERA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  device_name_ = prop.name;
  sm_count_ = prop.multiProcessorCount;

  // Every matrix the GPU multiplies must have kernels.
  std::vector<const model::MatrixView*> matrices;
  for (int il = 0; il < n_layers_; ++il) {
    const model::LlamaLayer& l = model.layers[il];
    for (const model::MatrixView* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down})
      matrices.push_back(m);
  }
  matrices.push_back(&model.token_embd);
  if (with_output_ && !model.tied_embeddings) matrices.push_back(&model.output);
  for (const model::MatrixView* m : matrices) check_matrix(*m);
  if (config_.head_dim > 256) {
    throw std::runtime_error(
        fmt::format("head dimension {} is over the CUDA attention kernel's 256", config_.head_dim));
  }

  // Sizes of everything, checked against free memory before the first allocation.
  Layout weights;
  auto device_bytes = [](const model::MatrixView& m) {
    return device_row_bytes(m.type, m.n_cols) * static_cast<size_t>(m.n_rows);
  };
  for (const model::MatrixView* m : matrices) weights.add(device_bytes(*m));
  const size_t norm_bytes = static_cast<size_t>(config_.n_embd) * sizeof(float);
  for (int il = 0; il < n_layers_; ++il) weights.add(2 * align_up(norm_bytes));
  weights.add(norm_bytes);
  weights.add(config_.rope.freq_factors.size() * sizeof(float) + 4);
  const size_t kv_elem = f16_cache_ ? 2 : 4;
  const size_t kv_layer_bytes = align_up(static_cast<size_t>(n_slots_) * config_.kv_dim() * kv_elem);
  kv_bytes_ = 2ull * kv_layer_bytes * n_layers_;
  int64_t largest_matrix = 0;
  for (const model::MatrixView* m : matrices) largest_matrix = std::max(largest_matrix, m->n_rows * m->n_cols);
  const size_t w16_bytes = align_up(static_cast<size_t>(largest_matrix) * sizeof(__half));
  const int max_width = std::max({config_.n_embd, config_.q_dim(), config_.n_ff});
  const size_t per_token = sizeof(float) * (2ull * config_.n_embd + 2ull * config_.q_dim() + 2ull * config_.kv_dim() +
                                            2ull * config_.n_ff + config_.n_vocab) +
                           sizeof(__half) * max_width;
  const uint64_t activation_bytes = per_token * kInitialCapacity + w16_bytes;
  const uint64_t needed = weights.size() + kv_bytes_ + activation_bytes + kHeadroomBytes;
  size_t free_bytes = 0, total_bytes = 0;
  TESSERA_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (needed > free_bytes) {
    throw std::runtime_error(fmt::format(
        "not enough GPU memory on {}: needed {:.0f} MiB (weights {:.0f}, KV cache {:.0f}, buffers {:.0f}) but only "
        "{:.0f} MiB of {:.0f} MiB are free; use --backend hybrid --gpu-layers N or a smaller --ctx",
        device_name_, mib(needed), mib(weights.size()), mib(kv_bytes_), mib(activation_bytes + kHeadroomBytes),
        mib(free_bytes), mib(total_bytes)));
  }

  TESSERA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  TESSERA_CUBLAS_CHECK(cublasCreate(&cublas_));
  TESSERA_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));

  // Upload the weights, one copy each, in their block formats (device_layout.h).
  TESSERA_CUDA_CHECK(cudaMalloc(&weight_arena_, weights.size()));
  auto* base = static_cast<uint8_t*>(weight_arena_);
  size_t offset = 0;
  auto reserve = [&](size_t bytes) {
    uint8_t* dst = base + offset;
    offset = align_up(offset + bytes);
    return dst;
  };
  auto upload = [&](const void* src, size_t bytes) {
    uint8_t* dst = reserve(bytes);
    TESSERA_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    return dst;
  };
  std::vector<uint8_t> staging;
  auto upload_matrix = [&](const model::MatrixView& m) {
    DeviceMatrix d{m.type, nullptr, device_row_bytes(m.type, m.n_cols), m.n_cols, m.n_rows};
    if (keeps_file_layout(m.type)) {
      d.data = upload(m.data, m.bytes());
      return d;
    }
    // Rewritten on the host a slice of rows at a time, so that the staging buffer stays small.
    uint8_t* dst = reserve(device_bytes(m));
    const int64_t slice_rows = std::max<int64_t>(1, static_cast<int64_t>(kStagingBytes / d.row_bytes));
    staging.resize(static_cast<size_t>(std::min(slice_rows, m.n_rows)) * d.row_bytes);
    for (int64_t r = 0; r < m.n_rows; r += slice_rows) {
      const int64_t n = std::min(slice_rows, m.n_rows - r);
      to_device_layout(m.type, m.row(r), n, m.n_cols, staging.data());
      TESSERA_CUDA_CHECK(cudaMemcpy(dst + static_cast<size_t>(r) * d.row_bytes, staging.data(),
                                    static_cast<size_t>(n) * d.row_bytes, cudaMemcpyHostToDevice));
    }
    d.data = dst;
    return d;
  };
  layers_.resize(n_layers_);
  for (int il = 0; il < n_layers_; ++il) {
    const model::LlamaLayer& l = model.layers[il];
    LayerWeights& d = layers_[il];
    d.wq = upload_matrix(l.wq);
    d.wk = upload_matrix(l.wk);
    d.wv = upload_matrix(l.wv);
    d.wo = upload_matrix(l.wo);
    d.w_gate = upload_matrix(l.w_gate);
    d.w_up = upload_matrix(l.w_up);
    d.w_down = upload_matrix(l.w_down);
    d.attn_norm = reinterpret_cast<const float*>(upload(l.attn_norm, norm_bytes));
    d.ffn_norm = reinterpret_cast<const float*>(upload(l.ffn_norm, norm_bytes));
  }
  token_embd_ = upload_matrix(model.token_embd);
  if (with_output_) {
    output_ = model.tied_embeddings ? token_embd_ : upload_matrix(model.output);
    output_norm_ = reinterpret_cast<const float*>(upload(model.output_norm, norm_bytes));
  }
  if (!config_.rope.freq_factors.empty()) {
    freq_factors_ = reinterpret_cast<const float*>(
        upload(config_.rope.freq_factors.data(), config_.rope.freq_factors.size() * sizeof(float)));
  }

  TESSERA_CUDA_CHECK(cudaMalloc(&kv_arena_, std::max<uint64_t>(kv_bytes_, 1)));
  for (int il = 0; il < n_layers_; ++il) {
    k_cache_.push_back(static_cast<uint8_t*>(kv_arena_) + (2 * il) * kv_layer_bytes);
    v_cache_.push_back(static_cast<uint8_t*>(kv_arena_) + (2 * il + 1) * kv_layer_bytes);
  }

  // Flash decoding: enough key splits that one token's heads fill every multiprocessor twice.
  max_splits_ = std::clamp(2 * sm_count_ / std::max(1, config_.n_head_kv), 1, kMaxSplits);
  TESSERA_CUDA_CHECK(cudaMalloc(&w16_, w16_bytes));
  AttentionParams ap{config_.n_head, config_.n_head_kv, config_.head_dim, f16_cache_};
  fused_decode_attention_ = decode_attention_supported(ap);
  if (fused_decode_attention_) decode_attention_prepare(ap);
  TESSERA_CUDA_CHECK(
      cudaMalloc(&partials_, attention_partials_floats(ap, kMaxMatvecTokens, max_splits_) * sizeof(float)));
  table_capacity_ = kMaxMatvecTokens * n_slots_;
  allocate_activations(kInitialCapacity);
}

LlamaCuda::~LlamaCuda() {
  free_graphs();
  if (stream_) cudaStreamSynchronize(stream_);
  cudaFree(activation_arena_);
  cudaFree(step_device_);
  cudaFreeHost(step_host_);
  cudaFreeHost(logits_host_);
  cudaFree(partials_);
  cudaFree(w16_);
  cudaFree(kv_arena_);
  cudaFree(weight_arena_);
  if (cublas_) cublasDestroy(cublas_);
  if (stream_) cudaStreamDestroy(stream_);
}

void LlamaCuda::free_graphs() {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
}

void LlamaCuda::allocate_activations(int capacity) {
  free_graphs();  // they hold the old pointers
  if (stream_) TESSERA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  cudaFree(activation_arena_);
  cudaFree(step_device_);
  cudaFreeHost(step_host_);
  cudaFreeHost(logits_host_);
  activation_arena_ = nullptr;
  step_device_ = nullptr;
  step_host_ = nullptr;
  logits_host_ = nullptr;

  const int64_t n = capacity;
  const model::LlamaConfig& c = config_;
  const int max_width = std::max({c.n_embd, c.q_dim(), c.n_ff});
  Layout layout;
  const size_t o_x = layout.add(n * c.n_embd * sizeof(float));
  const size_t o_norm = layout.add(n * c.n_embd * sizeof(float));
  const size_t o_q = layout.add(n * c.q_dim() * sizeof(float));
  const size_t o_k = layout.add(n * c.kv_dim() * sizeof(float));
  const size_t o_v = layout.add(n * c.kv_dim() * sizeof(float));
  const size_t o_attn = layout.add(n * c.q_dim() * sizeof(float));
  const size_t o_gate = layout.add(n * c.n_ff * sizeof(float));
  const size_t o_up = layout.add(n * c.n_ff * sizeof(float));
  const size_t o_logits = layout.add(with_output_ ? n * c.n_vocab * sizeof(float) : 0);
  const size_t o_x16 = layout.add(n * max_width * sizeof(__half));
  const size_t o_q8 = layout.add(kMaxMatvecTokens * max_width * sizeof(int8_t));
  const size_t o_q8_ds = layout.add(kMaxMatvecTokens * (max_width / kQ8Block) * sizeof(float2));
  const size_t o_norm_q8 = layout.add(kMaxMatvecTokens * c.n_embd * sizeof(int8_t));
  const size_t o_norm_q8_ds = layout.add(kMaxMatvecTokens * (c.n_embd / kQ8Block) * sizeof(float2));
  const size_t o_norm_sums = layout.add(kMaxMatvecTokens * (c.n_embd / kQ8Block) * sizeof(float));
  void* arena = nullptr;
  if (const cudaError_t err = cudaMalloc(&arena, layout.size()); err != cudaSuccess) {
    size_t free_bytes = 0, total_bytes = 0;
    cudaGetLastError();
    cudaMemGetInfo(&free_bytes, &total_bytes);
    throw std::runtime_error(
        fmt::format("not enough GPU memory for a batch of {} tokens: needed {:.0f} MiB, {:.0f} MiB free", capacity,
                    mib(layout.size()), mib(free_bytes)));
  }
  activation_arena_ = arena;
  auto* b = static_cast<uint8_t*>(arena);
  x_ = reinterpret_cast<float*>(b + o_x);
  norm_ = reinterpret_cast<float*>(b + o_norm);
  q_ = reinterpret_cast<float*>(b + o_q);
  k_ = reinterpret_cast<float*>(b + o_k);
  v_ = reinterpret_cast<float*>(b + o_v);
  attn_ = reinterpret_cast<float*>(b + o_attn);
  gate_ = reinterpret_cast<float*>(b + o_gate);
  up_ = reinterpret_cast<float*>(b + o_up);
  logits_ = reinterpret_cast<float*>(b + o_logits);
  x16_ = reinterpret_cast<__half*>(b + o_x16);
  q8_ = reinterpret_cast<int8_t*>(b + o_q8);
  q8_ds_ = reinterpret_cast<float2*>(b + o_q8_ds);
  norm_q8_ = reinterpret_cast<int8_t*>(b + o_norm_q8);
  norm_q8_ds_ = reinterpret_cast<float2*>(b + o_norm_q8_ds);
  norm_sums_ = reinterpret_cast<float*>(b + o_norm_sums);

  capacity_ = capacity;
  const size_t step_ints = 6ull * capacity_ + table_capacity_;
  TESSERA_CUDA_CHECK(cudaMalloc(&step_device_, step_ints * sizeof(int32_t)));
  TESSERA_CUDA_CHECK(cudaMallocHost(&step_host_, step_ints * sizeof(int32_t)));
  if (with_output_) {
    TESSERA_CUDA_CHECK(cudaMallocHost(&logits_host_, static_cast<size_t>(capacity_) * c.n_vocab * sizeof(float)));
  }
}

void LlamaCuda::upload_step(const ForwardBatch& batch) {
  const int n = static_cast<int>(batch.tokens.size());
  if (batch.positions.size() != batch.tokens.size() || batch.seq_index.size() != batch.tokens.size()) {
    throw std::runtime_error("forward batch: tokens, positions and seq_index differ in length");
  }
  // Slot table: for each sequence of the batch, its slots for positions 0..(largest position in the batch).
  std::vector<int32_t> seq_offset(batch.sequences.size(), -1);
  std::vector<int32_t> seq_len(batch.sequences.size(), 0);
  for (int t = 0; t < n; ++t) {
    const int32_t tok = batch.tokens[t];
    if (tok < 0 || tok >= config_.n_vocab) throw std::runtime_error(fmt::format("token id {} is out of range", tok));
    const int32_t s = batch.seq_index[t];
    if (s < 0 || static_cast<size_t>(s) >= batch.sequences.size()) {
      throw std::runtime_error(fmt::format("forward batch: sequence index {} is out of range", s));
    }
    const int32_t pos = batch.positions[t];
    if (pos < 0 || static_cast<size_t>(pos) >= batch.sequences[s].slots.size()) {
      throw std::runtime_error(fmt::format("forward batch: position {} has no KV cache slot", pos));
    }
    seq_len[s] = std::max(seq_len[s], pos + 1);
  }
  int table_used = 0, max_keys = 0;
  for (size_t s = 0; s < seq_len.size(); ++s) {
    max_keys = std::max(max_keys, seq_len[s]);
    if (seq_len[s] > 0) {
      seq_offset[s] = table_used;
      table_used += seq_len[s];
    }
  }
  if (n > capacity_ || table_used > table_capacity_) {
    table_capacity_ = std::max(table_capacity_, table_used);
    allocate_activations(std::max(capacity_, n));
  }
  int32_t* h = step_host_;
  int32_t* table = h + 6 * capacity_;
  for (size_t s = 0; s < seq_len.size(); ++s) {
    for (int32_t j = 0; j < seq_len[s]; ++j) {
      const int32_t slot = batch.sequences[s].slots[j];
      if (slot < 0 || slot >= n_slots_) {
        throw std::runtime_error(
            fmt::format("forward batch: KV cache slot {} is outside the cache of {}", slot, n_slots_));
      }
      table[seq_offset[s] + j] = slot;
    }
  }
  for (int t = 0; t < n; ++t) {
    const int32_t s = batch.seq_index[t];
    h[t] = batch.tokens[t];
    h[capacity_ + t] = batch.positions[t];
    h[2 * capacity_ + t] = table[seq_offset[s] + batch.positions[t]];
    h[3 * capacity_ + t] = seq_offset[s];
  }
  for (size_t r = 0; r < batch.output_rows.size(); ++r) {
    const int32_t row = batch.output_rows[r];
    if (row < 0 || row >= n || (r > 0 && row <= batch.output_rows[r - 1])) {
      throw std::runtime_error("forward batch: output rows must be ascending token indices");
    }
    h[4 * capacity_ + r] = row;
  }
  // Prompt steps: the token indices grouped by sequence, and each sequence's share for prompt_attention (an f16
  // cache and a head dimension it takes; else attention_kernel serves the step).
  const AttentionParams ap{config_.n_head, config_.n_head_kv, config_.head_dim, f16_cache_};
  prompt_sequences_.clear();
  use_prompt_attention_ = n > kMaxMatvecTokens && prompt_attention_supported(ap);
  if (use_prompt_attention_) {
    int32_t* rows = h + 5 * capacity_;
    int rows_used = 0;
    for (size_t s = 0; s < seq_len.size(); ++s) {
      if (seq_len[s] == 0) continue;
      PromptSequence seq;
      seq.row_begin = rows_used;
      seq.table_offset = seq_offset[s];
      seq.n_keys = seq_len[s];
      for (int t = 0; t < n; ++t) {
        if (batch.seq_index[t] == static_cast<int32_t>(s)) rows[rows_used++] = t;
      }
      seq.n_rows = rows_used - seq.row_begin;
      prompt_sequences_.push_back(seq);
    }
  }
  // Decode steps split each token's keys over blocks by the longest sequence (the graph is captured per count).
  decode_splits_ = fused_decode_attention_ ? decode_attention_splits(ap, max_keys, max_splits_) : max_splits_;
  step_used_ = 6ull * capacity_ + table_used;
  TESSERA_CUDA_CHECK(
      cudaMemcpyAsync(step_device_, step_host_, step_used_ * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
}

Q8Rows LlamaCuda::decode_q8(int width, int n_tokens) const {
  if (n_tokens > kMaxMatvecTokens || width % kQ8Block != 0) return Q8Rows{};
  return Q8Rows{q8_, q8_ds_, width};
}

__half* LlamaCuda::prompt_f16(int n_tokens) const { return n_tokens > kMaxMatvecTokens ? x16_ : nullptr; }

void LlamaCuda::matmuls(std::initializer_list<MatmulTarget> targets, const float* x, const Q8Rows& x_q8,
                        const __half* x16, int n_tokens, bool accumulate, const NormScale& norm,
                        const float* next_norm) {
  if (n_tokens == 0) return;
  const int64_t n_cols = targets.begin()->w->n_cols;
  if (n_tokens <= kMaxMatvecTokens) {
    // The integer kernels read x quantized; quantize it here unless the kernel that made x already did.
    const bool wants_q8 = std::any_of(targets.begin(), targets.end(),
                                      [](const MatmulTarget& target) { return matvec_reads_q8(target.w->type); });
    Q8Rows xq = x_q8;
    if (wants_q8 && !xq.q) {
      xq = decode_q8(static_cast<int>(n_cols), n_tokens);
      quantize_q8(x, n_cols, n_tokens, xq, stream_);
    }
    if (next_norm) {
      const MatmulTarget& target = *targets.begin();
      matvec_norm(MatvecJob{*target.w, target.y, target.w->n_rows, accumulate}, xq, n_tokens,
                  NormOutput{next_norm, norm_q8(), norm_sums_}, stream_);
      return;
    }
    // Consecutive matrices of one type and width share a launch, or of two types where the kernels allow it.
    MatvecJob jobs[kMaxMatvecJobs];
    int n_jobs = 0;
    auto joins_launch = [&](GgmlType type) {
      const GgmlType last = jobs[n_jobs - 1].w.type;
      return n_jobs < kMaxMatvecJobs &&
             (type == last || (last == jobs[0].w.type && matvec_mixes_types(last, type, n_cols, n_tokens)));
    };
    for (const MatmulTarget& target : targets) {
      if (n_jobs > 0 && !joins_launch(target.w->type)) {
        matvec(jobs, n_jobs, x, n_cols, xq, n_tokens, stream_, norm);
        n_jobs = 0;
      }
      jobs[n_jobs++] = MatvecJob{*target.w, target.y, target.w->n_rows, accumulate};
    }
    matvec(jobs, n_jobs, x, n_cols, xq, n_tokens, stream_, norm);
    return;
  }
  if (!x16) {
    convert_f32_to_f16(x, x16_, n_cols * n_tokens, stream_);
    x16 = x16_;
  }
  for (const MatmulTarget& target : targets) {
    gemm(cublas_, *target.w, x, x16, n_tokens, target.y, target.w->n_rows, accumulate, w16_, stream_);
  }
}

bool LlamaCuda::fuses_attn_norm(int il, int n_tokens) const {
  const LayerWeights& w = layers_[il];
  return n_tokens <= kMaxMatvecTokens && il > 0 && matvec_fuses_norm(layers_[il - 1].w_down) &&
         matvec_reads_q8(w.wq.type) && matvec_reads_q8(w.wk.type) && matvec_reads_q8(w.wv.type);
}

bool LlamaCuda::fuses_ffn_norm(int il, int n_tokens) const {
  const LayerWeights& w = layers_[il];
  return n_tokens <= kMaxMatvecTokens && matvec_fuses_norm(w.wo) && matvec_reads_q8(w.w_gate.type) &&
         matvec_reads_q8(w.w_up.type);
}

bool LlamaCuda::fuses_swiglu(int il, int n_tokens) const {
  const LayerWeights& w = layers_[il];
  return n_tokens == 1 && fuses_ffn_norm(il, n_tokens) && matvec_fuses_swiglu(w.w_gate, w.w_up) &&
         matvec_reads_q8(w.w_down.type);
}

void LlamaCuda::enqueue_layers(int n_tokens) {
  const model::LlamaConfig& c = config_;
  dequantize_rows_f32(token_embd_, tokens_d(), n_tokens, x_, stream_);
  RopeParams rope;
  rope.n_head = c.n_head;
  rope.n_head_kv = c.n_head_kv;
  rope.head_dim = c.head_dim;
  rope.n_dims = c.rope.n_dims;
  rope.theta_scale = std::pow(c.rope.freq_base, -2.0f / static_cast<float>(c.rope.n_dims));
  rope.freq_scale = c.rope.freq_scale;
  rope.freq_factors = freq_factors_;
  const AttentionParams ap{c.n_head, c.n_head_kv, c.head_dim, f16_cache_};
  const bool decode = n_tokens <= kMaxMatvecTokens;
  // In decode steps the RMSNorm and SwiGLU kernels also quantize their outputs for the integer matvec kernels,
  // and where the kernels allow it RMSNorm has no launch of its own (NormScale).
  const NormScale fused_norm{norm_sums_, c.n_embd, c.rms_eps};
  for (int il = 0; il < n_layers_; ++il) {
    const LayerWeights& w = layers_[il];
    __half* const x16 = prompt_f16(n_tokens);
    const bool fused_attn_norm = fuses_attn_norm(il, n_tokens), fused_ffn_norm = fuses_ffn_norm(il, n_tokens);
    const bool next_attn_norm_fused = il + 1 < n_layers_ && fuses_attn_norm(il + 1, n_tokens);
    if (fused_attn_norm) {
      matmuls({{&w.wq, q_}, {&w.wk, k_}, {&w.wv, v_}}, nullptr, norm_q8(), nullptr, n_tokens, false, fused_norm);
    } else {
      const Q8Rows norm_q8 = decode_q8(c.n_embd, n_tokens);
      rms_norm(x_, nullptr, w.attn_norm, norm_, x16, norm_q8, n_tokens, c.n_embd, c.rms_eps, stream_);
      matmuls({{&w.wq, q_}, {&w.wk, k_}, {&w.wv, v_}}, norm_, norm_q8, x16, n_tokens, false);
    }
    const float* const ffn_norm_fused_into_wo = fused_ffn_norm ? w.ffn_norm : nullptr;
    if (decode && fused_decode_attention_) {
      // RoPE, the KV store and (one split) the Q8 quantization of the output happen inside the attention kernel.
      const Q8Rows attn_q8 = decode_attention_fuses_q8(ap) ? decode_q8(c.q_dim(), n_tokens) : Q8Rows{};
      decode_attention(ap, rope, q_, k_, v_, positions_d(), write_slots_d(), slot_offsets_d(), slot_table_d(),
                       n_tokens, decode_splits_, k_cache_[il], v_cache_[il], partials_, attn_, attn_q8, stream_);
      matmuls({{&w.wo, x_}}, attn_, attn_q8, nullptr, n_tokens, true, {}, ffn_norm_fused_into_wo);
    } else if (use_prompt_attention_) {
      rope_and_store_kv(rope, q_, k_, v_, positions_d(), write_slots_d(), n_tokens, k_cache_[il], v_cache_[il],
                        f16_cache_, stream_);
      // Writes Wo's f16 input as well.
      prompt_attention(ap, q_, k_cache_[il], v_cache_[il], positions_d(), prompt_rows_d(), slot_table_d(),
                       prompt_sequences_.data(), static_cast<int>(prompt_sequences_.size()), attn_, x16, stream_);
      matmuls({{&w.wo, x_}}, attn_, Q8Rows{}, x16, n_tokens, true);
    } else {
      rope_and_store_kv(rope, q_, k_, v_, positions_d(), write_slots_d(), n_tokens, k_cache_[il], v_cache_[il],
                        f16_cache_, stream_);
      attention(ap, q_, k_cache_[il], v_cache_[il], positions_d(), slot_offsets_d(), slot_table_d(), n_tokens,
                decode ? max_splits_ : 1, partials_, attn_, stream_);
      matmuls({{&w.wo, x_}}, attn_, Q8Rows{}, nullptr, n_tokens, true, {}, ffn_norm_fused_into_wo);
    }
    const Q8Rows ff_q8 = decode_q8(c.n_ff, n_tokens);
    if (fuses_swiglu(il, n_tokens)) {
      // Gate, up, SwiGLU and the down projection's quantized input in one launch (the f32 products stay on chip).
      matvec_swiglu(w.w_gate, w.w_up, norm_q8(), fused_norm, ff_q8, stream_);
    } else {
      if (fused_ffn_norm) {
        matmuls({{&w.w_gate, gate_}, {&w.w_up, up_}}, nullptr, norm_q8(), nullptr, n_tokens, false, fused_norm);
      } else {
        const Q8Rows norm_q8 = decode_q8(c.n_embd, n_tokens);
        rms_norm(x_, nullptr, w.ffn_norm, norm_, x16, norm_q8, n_tokens, c.n_embd, c.rms_eps, stream_);
        matmuls({{&w.w_gate, gate_}, {&w.w_up, up_}}, norm_, norm_q8, x16, n_tokens, false);
      }
      swiglu(gate_, up_, gate_, x16, ff_q8, static_cast<int64_t>(n_tokens) * c.n_ff, stream_);
    }
    matmuls({{&w.w_down, x_}}, gate_, ff_q8, x16, n_tokens, true, {},
            next_attn_norm_fused ? layers_[il + 1].attn_norm : nullptr);
  }
}

void LlamaCuda::enqueue_output(int n_tokens, int n_out) {
  (void)n_tokens;
  if (n_out == 0) return;
  const Q8Rows norm_q8 = decode_q8(config_.n_embd, n_out);
  rms_norm(x_, output_rows_d(), output_norm_, norm_, nullptr, norm_q8, n_out, config_.n_embd, config_.rms_eps, stream_);
  matmuls({{&output_, logits_}}, norm_, norm_q8, nullptr, n_out, false);
  TESSERA_CUDA_CHECK(cudaMemcpyAsync(logits_host_, logits_,
                                     static_cast<size_t>(n_out) * config_.n_vocab * sizeof(float),
                                     cudaMemcpyDeviceToHost, stream_));
}

void LlamaCuda::synchronize(const char* what) {
  if (const cudaError_t err = cudaStreamSynchronize(stream_); err != cudaSuccess) {
    throw std::runtime_error(fmt::format("CUDA error during {}: {}", what, cudaGetErrorString(err)));
  }
}

void LlamaCuda::forward(const ForwardBatch& batch, float* logits) {
  if (!with_output_) throw std::runtime_error("LlamaCuda::forward needs the output layer on the GPU");
  const int n_tokens = static_cast<int>(batch.tokens.size());
  const int n_out = static_cast<int>(batch.output_rows.size());
  if (n_tokens == 0) return;
  upload_step(batch);
  if (use_graphs_ && n_tokens <= kMaxMatvecTokens) {
    // Decode: replay the captured step; its kernels read tokens, positions and slots from step_device_.
    const GraphKey key{n_tokens, n_out, decode_splits_};
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      cudaGraph_t graph = nullptr;
      TESSERA_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      try {
        enqueue_layers(n_tokens);
        enqueue_output(n_tokens, n_out);
      } catch (...) {
        cudaStreamEndCapture(stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
      }
      TESSERA_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
      cudaGraphExec_t exec = nullptr;
      const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      check_cuda(err, "cudaGraphInstantiate");
      it = graphs_.emplace(key, exec).first;
    }
    TESSERA_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
  } else {
    enqueue_layers(n_tokens);
    enqueue_output(n_tokens, n_out);
  }
  synchronize("the forward pass");
  std::memcpy(logits, logits_host_, static_cast<size_t>(n_out) * config_.n_vocab * sizeof(float));
}

void LlamaCuda::forward_layers(const ForwardBatch& batch, float* x) {
  const int n_tokens = static_cast<int>(batch.tokens.size());
  if (n_tokens == 0) return;
  upload_step(batch);
  enqueue_layers(n_tokens);
  TESSERA_CUDA_CHECK(cudaMemcpyAsync(x, x_, static_cast<size_t>(n_tokens) * config_.n_embd * sizeof(float),
                                     cudaMemcpyDeviceToHost, stream_));
  synchronize("the GPU layers");
}

namespace {

class CudaBackend final : public Backend {
 public:
  CudaBackend(const model::LlamaModel& model, const BackendOptions& options)
      : llama_(model, options, model.config.n_layer, true) {}
  std::string_view name() const override { return "cuda"; }
  std::string device() const override { return llama_.device_name(); }
  uint64_t kv_cache_bytes() const override { return llama_.kv_cache_bytes(); }
  void forward(const ForwardBatch& batch, float* logits) override { llama_.forward(batch, logits); }

 private:
  LlamaCuda llama_;
};

}  // namespace
}  // namespace tessera::cuda

namespace tessera {

std::unique_ptr<Backend> make_cuda_backend(const model::LlamaModel& model, const BackendOptions& options) {
  return std::make_unique<cuda::CudaBackend>(model, options);
}

}  // namespace tessera
