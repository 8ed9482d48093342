#include "backend/cuda/llama_cuda.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "backend/cuda/cuda_check.h"
#include "util/env_options.h"

namespace tessera::cuda {
namespace {

constexpr size_t kAlign = 256;
constexpr int kInitialCapacity = 512;  // tokens per step before the buffers grow (the engine's default n_batch)
constexpr int kMaxSplits = 32;
constexpr uint64_t kHeadroomBytes = 256ull << 20;  // cuBLAS workspace, graphs, the CUDA context's own needs

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

int log2_exact(int n) {
  if (n <= 0) throw std::runtime_error(fmt::format("the KV block size {} is not a power of two", n));
  int shift = 0;
  while ((1 << shift) < n) ++shift;
  if ((1 << shift) != n) throw std::runtime_error(fmt::format("the KV block size {} is not a power of two", n));
  return shift;
}

}  // namespace

LlamaCuda::LlamaCuda(const model::LlamaModel& model, const BackendOptions& options, int n_layers, bool with_output)
    : model_(model),
      config_(model.config),
      n_layers_(n_layers),
      with_output_(with_output),
      kv_format_(options.kv_format),
      n_slots_(options.n_kv_slots),
      kv_block_size_(options.kv_block_size),
      weights_(model, n_layers, with_output) {
  use_graphs_ = util::env_options().cuda_graphs;
  log2_exact(kv_block_size_);  // a power of two, or a clear error
  if (n_slots_ <= 0 || n_slots_ % kv_block_size_ != 0) {
    throw std::runtime_error("the CUDA backend needs a KV cache of whole blocks");
  }
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
  if (config_.head_dim > 256) {
    throw std::runtime_error(
        fmt::format("head dimension {} is over the CUDA attention kernel's 256", config_.head_dim));
  }

  for (KvFormat format : {kv_format_.k, kv_format_.v}) {
    const std::string why = kv_format_unsupported(format, config_.head_dim, config_.n_head_kv);
    if (!why.empty()) throw std::runtime_error(why);
  }

  // Sizes of everything, checked against free memory before the first allocation.
  const size_t k_layer_bytes = kv_cache_device_bytes(kv_format_.k, n_slots_, config_.kv_dim());
  const size_t v_layer_bytes = kv_cache_device_bytes(kv_format_.v, n_slots_, config_.kv_dim());
  kv_bytes_ = static_cast<uint64_t>(k_layer_bytes + v_layer_bytes) * n_layers_;
  const size_t w16_bytes = align_up(static_cast<size_t>(weights_.largest_matrix_elements()) * sizeof(__half));
  const int max_width = std::max({config_.n_embd, config_.q_dim(), config_.n_ff});
  const size_t per_token = sizeof(float) * (2ull * config_.n_embd + 2ull * config_.q_dim() + 2ull * config_.kv_dim() +
                                            2ull * config_.n_ff + config_.n_vocab) +
                           sizeof(__half) * max_width;
  const uint64_t activation_bytes = per_token * kInitialCapacity + w16_bytes;
  const uint64_t needed = weights_.bytes() + kv_bytes_ + activation_bytes + kHeadroomBytes;
  size_t free_bytes = 0, total_bytes = 0;
  TESSERA_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (needed > free_bytes) {
    throw std::runtime_error(fmt::format(
        "not enough GPU memory on {}: needed {:.0f} MiB (weights {:.0f}, KV cache {:.0f}, buffers {:.0f}) but only "
        "{:.0f} MiB of {:.0f} MiB are free; use --backend hybrid --gpu-layers N or a smaller --ctx",
        device_name_, mib(needed), mib(weights_.bytes()), mib(kv_bytes_), mib(activation_bytes + kHeadroomBytes),
        mib(free_bytes), mib(total_bytes)));
  }

  TESSERA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  TESSERA_CUBLAS_CHECK(cublasCreate(&cublas_));
  TESSERA_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  weights_.upload();

  TESSERA_CUDA_CHECK(cudaMalloc(&kv_arena_, std::max<uint64_t>(kv_bytes_, 1)));
  for (int il = 0; il < n_layers_; ++il) {
    uint8_t* layer = static_cast<uint8_t*>(kv_arena_) + il * (k_layer_bytes + v_layer_bytes);
    k_cache_.push_back(kv_cache_at(layer, kv_format_.k, n_slots_, config_.kv_dim()));
    v_cache_.push_back(kv_cache_at(layer + k_layer_bytes, kv_format_.v, n_slots_, config_.kv_dim()));
  }

  // Flash decoding: enough key splits that one token's heads fill every multiprocessor twice.
  max_splits_ = std::clamp(2 * sm_count_ / std::max(1, config_.n_head_kv), 1, kMaxSplits);
  TESSERA_CUDA_CHECK(cudaMalloc(&w16_, w16_bytes));
  const AttentionParams ap = attention_params();
  fused_decode_attention_ = decode_attention_supported(ap);
  if (fused_decode_attention_) decode_attention_prepare(ap);
  TESSERA_CUDA_CHECK(
      cudaMalloc(&partials_, attention_partials_floats(ap, kMaxMatvecTokens, max_splits_) * sizeof(float)));
  allocate_activations(kInitialCapacity);
  allocate_step_inputs(kInitialCapacity, std::max(64, 2 * (n_slots_ / kv_block_size_)));
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
  if (cublas_) cublasDestroy(cublas_);
  if (stream_) cudaStreamDestroy(stream_);
}

void LlamaCuda::free_graphs() {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
}

LlamaCuda::StepInputs LlamaCuda::sections(int32_t* base) const {
  StepInputs s;
  s.windows = reinterpret_cast<KeyWindow*>(base);
  s.tokens = base + 2 * input_capacity_;
  s.positions = s.tokens + input_capacity_;
  s.write_slots = s.positions + input_capacity_;
  s.table_offsets = s.write_slots + input_capacity_;
  s.output_rows = s.table_offsets + input_capacity_;
  s.block_table = s.output_rows + input_capacity_;
  return s;
}

// Both allocations free the captured graphs first (they hold the old pointers) and forget the old buffers before
// asking for new ones, so a failed allocation leaves no pointer to freed memory: the next step tries again.
void LlamaCuda::allocate_activations(int token_capacity) {
  free_graphs();
  if (stream_) TESSERA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  cudaFree(activation_arena_);
  cudaFreeHost(logits_host_);
  activation_arena_ = nullptr;
  logits_host_ = nullptr;
  token_capacity_ = 0;

  const int64_t n = token_capacity;
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
        fmt::format("not enough GPU memory for a step of {} tokens: needed {:.0f} MiB, {:.0f} MiB free",
                    token_capacity, mib(layout.size()), mib(free_bytes)));
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
  if (with_output_) {
    TESSERA_CUDA_CHECK(cudaMallocHost(&logits_host_, static_cast<size_t>(n) * c.n_vocab * sizeof(float)));
  }
  token_capacity_ = token_capacity;
}

void LlamaCuda::allocate_step_inputs(int token_capacity, int table_capacity) {
  free_graphs();
  if (stream_) TESSERA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  cudaFree(step_device_);
  cudaFreeHost(step_host_);
  step_device_ = nullptr;
  step_host_ = nullptr;
  host_ = device_ = StepInputs{};
  input_capacity_ = table_capacity_ = 0;
  const size_t ints = 7ull * token_capacity + table_capacity;  // sections(): the windows are two ints each
  TESSERA_CUDA_CHECK(cudaMalloc(&step_device_, ints * sizeof(int32_t)));
  TESSERA_CUDA_CHECK(cudaMallocHost(&step_host_, ints * sizeof(int32_t)));
  input_capacity_ = token_capacity;
  table_capacity_ = table_capacity;
  host_ = sections(step_host_);
  device_ = sections(step_device_);
}

void LlamaCuda::copy_kv_blocks(std::span<const KvBlockCopy> copies) {
  const int n_blocks = n_slots_ / kv_block_size_;
  const int64_t bs = kv_block_size_;
  for (const KvBlockCopy& copy : copies) {
    if (copy.from < 0 || copy.from >= n_blocks || copy.to < 0 || copy.to >= n_blocks) {
      throw std::runtime_error(fmt::format("KV block copy {} -> {} is outside the cache of {} blocks", copy.from,
                                           copy.to, n_blocks));
    }
    for (int il = 0; il < n_layers_; ++il) {
      copy_kv_rows(k_cache_[il], kv_format_.k, config_.kv_dim(), copy.from * bs, copy.to * bs, bs, stream_);
      copy_kv_rows(v_cache_[il], kv_format_.v, config_.kv_dim(), copy.from * bs, copy.to * bs, bs, stream_);
    }
  }
}

void LlamaCuda::shift(std::span<const KvBlockCopy> copies, const KvShift& shift) {
  copy_kv_blocks(copies);
  const int n_copies = static_cast<int>(shift.slot_copies.size());
  const int n_rotated = static_cast<int>(shift.rotated_slots.size());
  if (n_copies + n_rotated == 0) {
    synchronize("the KV block copies");
    return;
  }
  // [n_copies] (from, to) pairs, then the rotated slots; a shift is rare, so they get a buffer of their own.
  std::vector<int32_t> inputs;
  for (const KvSlotCopy& c : shift.slot_copies) inputs.insert(inputs.end(), {c.from, c.to});
  inputs.insert(inputs.end(), shift.rotated_slots.begin(), shift.rotated_slots.end());
  int32_t* device = nullptr;
  TESSERA_CUDA_CHECK(cudaMalloc(&device, inputs.size() * sizeof(int32_t)));
  try {
    TESSERA_CUDA_CHECK(
        cudaMemcpyAsync(device, inputs.data(), inputs.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    const auto* slot_copies = reinterpret_cast<const int2*>(device);
    for (int il = 0; il < n_layers_; ++il) {
      copy_kv_slots(k_cache_[il], kv_format_.k, config_.kv_dim(), slot_copies, n_copies, stream_);
      copy_kv_slots(v_cache_[il], kv_format_.v, config_.kv_dim(), slot_copies, n_copies, stream_);
      rotate_cached_keys(rope_params(), k_cache_[il], kv_format_.k, shift.delta, device + 2 * n_copies, n_rotated,
                         stream_);
    }
    synchronize("the context shift");
  } catch (...) {
    cudaFree(device);
    throw;
  }
  cudaFree(device);
}

void LlamaCuda::upload_step(const StepPlan& plan) {
  const int n = plan.n_tokens();
  const int table = static_cast<int>(plan.block_table.size());
  if (plan.block_size != kv_block_size_ || plan.n_slots != n_slots_) {
    throw std::runtime_error(fmt::format("step plan: a KV cache of {} slots in blocks of {}; the CUDA cache has {} in "
                                         "blocks of {}",
                                         plan.n_slots, plan.block_size, n_slots_, kv_block_size_));
  }
  if (n > token_capacity_) allocate_activations(n);
  if (n > input_capacity_ || table > table_capacity_) {
    allocate_step_inputs(std::max(input_capacity_, n), std::max(table_capacity_, table));
  }
  std::copy(plan.tokens.begin(), plan.tokens.end(), host_.tokens);
  std::copy(plan.positions.begin(), plan.positions.end(), host_.positions);
  std::copy(plan.write_slots.begin(), plan.write_slots.end(), host_.write_slots);
  for (int t = 0; t < n; ++t) {
    const StepPlan::Run& run = plan.runs[plan.run_index[t]];
    host_.table_offsets[t] = run.table_begin;
    const int32_t first = run.first_visible(plan.positions[t]);
    host_.windows[t] = make_int2(first, std::min(run.n_sink, first));
  }
  std::copy(plan.output_rows.begin(), plan.output_rows.end(), host_.output_rows);
  std::copy(plan.block_table.begin(), plan.block_table.end(), host_.block_table);

  // Prompt steps: each sequence's share for prompt_attention (an f16 cache and a head dimension it takes; else
  // attention_kernel serves the step). Decode steps split each token's keys over blocks by the longest sequence
  // (the graph is captured per count).
  const AttentionParams ap = attention_params();
  use_prompt_attention_ = n > kMaxMatvecTokens && prompt_attention_supported(ap);
  prompt_sequences_.clear();
  step_has_windows_ = false;
  int max_keys = 0;  // that a token sees
  for (const StepPlan::Run& run : plan.runs) {
    const int32_t last = run.end_position() - 1, first = run.first_visible(last);
    max_keys = std::max(max_keys, std::min(run.n_sink, first) + last + 1 - first);
    step_has_windows_ = step_has_windows_ || run.window > 0;
    if (use_prompt_attention_) {
      prompt_sequences_.push_back({run.token_begin, run.n_tokens, run.table_begin, run.end_position()});
    }
  }
  decode_splits_ = fused_decode_attention_ ? decode_attention_splits(ap, max_keys, max_splits_) : max_splits_;
  const size_t step_used = static_cast<size_t>(host_.block_table - step_host_) + table;
  TESSERA_CUDA_CHECK(
      cudaMemcpyAsync(step_device_, step_host_, step_used * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
}

Q8Rows LlamaCuda::decode_q8(int width) const {
  if (width % kQ8Block != 0) return Q8Rows{};
  return Q8Rows{q8_, q8_ds_, width};
}

RopeParams LlamaCuda::rope_params() const {
  const model::LlamaConfig& c = config_;
  RopeParams rope;
  rope.n_head = c.n_head;
  rope.n_head_kv = c.n_head_kv;
  rope.head_dim = c.head_dim;
  rope.n_dims = c.rope.n_dims;
  rope.theta_scale = std::pow(c.rope.freq_base, -2.0f / static_cast<float>(c.rope.n_dims));
  rope.freq_scale = c.rope.freq_scale;
  rope.freq_factors = weights_.freq_factors();
  return rope;
}

AttentionParams LlamaCuda::attention_params() const {
  AttentionParams p;
  p.n_head = config_.n_head;
  p.n_head_kv = config_.n_head_kv;
  p.head_dim = config_.head_dim;
  p.k_format = kv_format_.k;
  p.v_format = kv_format_.v;
  p.kv_block_shift = log2_exact(kv_block_size_);
  return p;
}

void LlamaCuda::matmuls(std::initializer_list<MatmulTarget> targets, const MatmulInput& input, int n_tokens,
                        Accumulate accumulate) {
  if (n_tokens == 0) return;
  const int64_t n_cols = targets.begin()->w->n_cols;
  const bool add = accumulate == Accumulate::Yes;
  if (n_tokens <= kMaxMatvecTokens) {
    // The integer kernels read x quantized; quantize it here unless the kernel that made x already did.
    const bool wants_q8 = std::any_of(targets.begin(), targets.end(),
                                      [](const MatmulTarget& target) { return matvec_reads_q8(target.w->type); });
    Q8Rows xq = input.q8;
    if (wants_q8 && !xq.q) {
      xq = decode_q8(static_cast<int>(n_cols));
      quantize_q8(input.x, n_cols, n_tokens, xq, stream_);
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
        matvec(jobs, n_jobs, input.x, n_cols, xq, n_tokens, stream_, input.norm);
        n_jobs = 0;
      }
      jobs[n_jobs++] = MatvecJob{*target.w, target.y, target.w->n_rows, add};
    }
    matvec(jobs, n_jobs, input.x, n_cols, xq, n_tokens, stream_, input.norm);
    return;
  }
  const __half* x16 = input.x16;
  if (!x16) {
    convert_f32_to_f16(input.x, x16_, n_cols * n_tokens, stream_);
    x16 = x16_;
  }
  for (const MatmulTarget& target : targets) {
    gemm(cublas_, *target.w, input.x, x16, n_tokens, target.y, target.w->n_rows, add, w16_, stream_);
  }
}

void LlamaCuda::matmul_then_norm(const MatmulTarget& target, const MatmulInput& input, int n_tokens,
                                 const float* next_norm_weight) {
  Q8Rows xq = input.q8;
  if (!xq.q) {
    xq = decode_q8(static_cast<int>(target.w->n_cols));
    quantize_q8(input.x, target.w->n_cols, n_tokens, xq, stream_);
  }
  matvec_norm(MatvecJob{*target.w, target.y, target.w->n_rows, true}, xq, n_tokens,
              NormOutput{next_norm_weight, norm_q8(), norm_sums_}, stream_);
}

bool LlamaCuda::fuses_attn_norm(int il) const {
  const GpuWeights::Layer& w = weights_.layer(il);
  return il > 0 && matvec_fuses_norm(weights_.layer(il - 1).w_down) && matvec_reads_q8(w.wq.type) &&
         matvec_reads_q8(w.wk.type) && matvec_reads_q8(w.wv.type);
}

bool LlamaCuda::fuses_ffn_norm(int il) const {
  const GpuWeights::Layer& w = weights_.layer(il);
  return matvec_fuses_norm(w.wo) && matvec_reads_q8(w.w_gate.type) && matvec_reads_q8(w.w_up.type);
}

bool LlamaCuda::fuses_swiglu(int il, int n_tokens) const {
  const GpuWeights::Layer& w = weights_.layer(il);
  return n_tokens == 1 && fuses_ffn_norm(il) && matvec_fuses_swiglu(w.w_gate, w.w_up) && matvec_reads_q8(w.w_down.type);
}

void LlamaCuda::enqueue_step(int n_tokens) {
  dequantize_rows_f32(weights_.token_embd(), device_.tokens, n_tokens, x_, stream_);
  for (int il = 0; il < n_layers_; ++il) {
    if (n_tokens <= kMaxMatvecTokens) {
      decode_layer(il, n_tokens);
    } else {
      prompt_layer(il, n_tokens);
    }
  }
}

// A decode step's layer. RMSNorm and SwiGLU also quantize their outputs for the integer matvec kernels, and where
// the kernels allow it RMSNorm has no launch of its own: the matvec that makes its input (the previous down
// projection; Wo) leaves the sums of squares, the matvecs that read its output apply 1 / rms (NormScale).
void LlamaCuda::decode_layer(int il, int n_tokens) {
  const model::LlamaConfig& c = config_;
  const GpuWeights::Layer& w = weights_.layer(il);
  const NormScale fused_norm{norm_sums_, c.n_embd, c.rms_eps};

  // Attention block: RMSNorm -> q, k, v -> RoPE, KV store and attention in one kernel -> Wo -> residual.
  if (fuses_attn_norm(il)) {
    matmuls({{&w.wq, q_}, {&w.wk, k_}, {&w.wv, v_}}, {.q8 = norm_q8(), .norm = fused_norm}, n_tokens,
            Accumulate::No);
  } else {
    const Q8Rows norm_q8 = decode_q8(c.n_embd);
    rms_norm(x_, nullptr, w.attn_norm, norm_, nullptr, norm_q8, n_tokens, c.n_embd, c.rms_eps, stream_);
    matmuls({{&w.wq, q_}, {&w.wk, k_}, {&w.wv, v_}}, {.x = norm_, .q8 = norm_q8}, n_tokens, Accumulate::No);
  }
  const AttentionParams ap = attention_params();
  MatmulInput attention_out{.x = attn_};
  if (fused_decode_attention_) {
    // With one split the kernel also quantizes its output for Wo.
    attention_out.q8 = decode_attention_fuses_q8(ap) ? decode_q8(c.q_dim()) : Q8Rows{};
    decode_attention(ap, rope_params(), q_, k_, v_, device_.positions, device_.windows, device_.write_slots,
                     device_.table_offsets, device_.block_table, n_tokens, decode_splits_, k_cache_[il],
                     v_cache_[il], partials_, attn_, attention_out.q8, stream_);
  } else {
    rope_and_store_kv(rope_params(), q_, k_, v_, device_.positions, device_.write_slots, n_tokens, k_cache_[il],
                      v_cache_[il], kv_format_, stream_);
    attention(ap, q_, k_cache_[il], v_cache_[il], device_.positions, device_.windows, device_.table_offsets,
              device_.block_table, n_tokens, max_splits_, partials_, attn_, stream_);
  }
  if (fuses_ffn_norm(il)) {
    matmul_then_norm({&w.wo, x_}, attention_out, n_tokens, w.ffn_norm);
  } else {
    matmuls({{&w.wo, x_}}, attention_out, n_tokens, Accumulate::Yes);
  }

  // Feed-forward block: RMSNorm -> SwiGLU(gate, up) -> down -> residual.
  const Q8Rows ff_q8 = decode_q8(c.n_ff);
  if (fuses_swiglu(il, n_tokens)) {
    // Gate, up, SwiGLU and the down projection's quantized input in one launch (the f32 products stay on chip).
    matvec_swiglu(w.w_gate, w.w_up, norm_q8(), fused_norm, ff_q8, stream_);
  } else {
    if (fuses_ffn_norm(il)) {
      matmuls({{&w.w_gate, gate_}, {&w.w_up, up_}}, {.q8 = norm_q8(), .norm = fused_norm}, n_tokens, Accumulate::No);
    } else {
      const Q8Rows norm_q8 = decode_q8(c.n_embd);
      rms_norm(x_, nullptr, w.ffn_norm, norm_, nullptr, norm_q8, n_tokens, c.n_embd, c.rms_eps, stream_);
      matmuls({{&w.w_gate, gate_}, {&w.w_up, up_}}, {.x = norm_, .q8 = norm_q8}, n_tokens, Accumulate::No);
    }
    swiglu(gate_, up_, gate_, nullptr, ff_q8, static_cast<int64_t>(n_tokens) * c.n_ff, stream_);
  }
  const MatmulInput down_in{.x = gate_, .q8 = ff_q8};
  if (il + 1 < n_layers_ && fuses_attn_norm(il + 1)) {
    matmul_then_norm({&w.w_down, x_}, down_in, n_tokens, weights_.layer(il + 1).attn_norm);
  } else {
    matmuls({{&w.w_down, x_}}, down_in, n_tokens, Accumulate::Yes);
  }
}

// A prompt step's layer. The kernel that makes a matmul's input also writes its f16 copy (x16_) for cuBLAS.
void LlamaCuda::prompt_layer(int il, int n_tokens) {
  const model::LlamaConfig& c = config_;
  const GpuWeights::Layer& w = weights_.layer(il);

  // Attention block: RMSNorm -> q, k, v -> RoPE and the KV store -> flash attention -> Wo -> residual.
  rms_norm(x_, nullptr, w.attn_norm, norm_, x16_, Q8Rows{}, n_tokens, c.n_embd, c.rms_eps, stream_);
  matmuls({{&w.wq, q_}, {&w.wk, k_}, {&w.wv, v_}}, {.x = norm_, .x16 = x16_}, n_tokens, Accumulate::No);
  rope_and_store_kv(rope_params(), q_, k_, v_, device_.positions, device_.write_slots, n_tokens, k_cache_[il],
                    v_cache_[il], kv_format_, stream_);
  const AttentionParams ap = attention_params();
  if (use_prompt_attention_) {
    prompt_attention(ap, q_, k_cache_[il], v_cache_[il], device_.positions,
                     step_has_windows_ ? device_.windows : nullptr, device_.block_table, prompt_sequences_.data(),
                     static_cast<int>(prompt_sequences_.size()), attn_, x16_, stream_);
    matmuls({{&w.wo, x_}}, {.x = attn_, .x16 = x16_}, n_tokens, Accumulate::Yes);
  } else {
    attention(ap, q_, k_cache_[il], v_cache_[il], device_.positions, device_.windows, device_.table_offsets,
              device_.block_table, n_tokens, 1, partials_, attn_, stream_);
    matmuls({{&w.wo, x_}}, {.x = attn_}, n_tokens, Accumulate::Yes);
  }

  // Feed-forward block: RMSNorm -> SwiGLU(gate, up) -> down -> residual.
  rms_norm(x_, nullptr, w.ffn_norm, norm_, x16_, Q8Rows{}, n_tokens, c.n_embd, c.rms_eps, stream_);
  matmuls({{&w.w_gate, gate_}, {&w.w_up, up_}}, {.x = norm_, .x16 = x16_}, n_tokens, Accumulate::No);
  swiglu(gate_, up_, gate_, x16_, Q8Rows{}, static_cast<int64_t>(n_tokens) * c.n_ff, stream_);
  matmuls({{&w.w_down, x_}}, {.x = gate_, .x16 = x16_}, n_tokens, Accumulate::Yes);
}

void LlamaCuda::enqueue_output(int n_out) {
  if (n_out == 0) return;
  const Q8Rows norm_q8 = n_out <= kMaxMatvecTokens ? decode_q8(config_.n_embd) : Q8Rows{};
  rms_norm(x_, device_.output_rows, weights_.output_norm(), norm_, nullptr, norm_q8, n_out, config_.n_embd,
           config_.rms_eps, stream_);
  matmuls({{&weights_.output(), logits_}}, {.x = norm_, .q8 = norm_q8}, n_out, Accumulate::No);
  TESSERA_CUDA_CHECK(cudaMemcpyAsync(logits_host_, logits_,
                                     static_cast<size_t>(n_out) * config_.n_vocab * sizeof(float),
                                     cudaMemcpyDeviceToHost, stream_));
}

void LlamaCuda::synchronize(const char* what) {
  if (const cudaError_t err = cudaStreamSynchronize(stream_); err != cudaSuccess) {
    throw std::runtime_error(fmt::format("CUDA error during {}: {}", what, cudaGetErrorString(err)));
  }
}

void LlamaCuda::forward(std::span<const KvBlockCopy> copies, const StepPlan& plan, float* logits) {
  if (!with_output_) throw std::runtime_error("LlamaCuda::forward needs the output layer on the GPU");
  copy_kv_blocks(copies);
  const int n_tokens = plan.n_tokens(), n_out = plan.n_outputs();
  if (n_tokens == 0) {
    synchronize("the KV block copies");
    return;
  }
  upload_step(plan);
  if (use_graphs_ && n_tokens <= kMaxMatvecTokens) {
    // Decode: replay the captured step; its kernels read tokens, positions and slots from the step inputs.
    const GraphKey key{n_tokens, n_out, decode_splits_};
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      cudaGraph_t graph = nullptr;
      TESSERA_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      try {
        enqueue_step(n_tokens);
        enqueue_output(n_out);
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
    enqueue_step(n_tokens);
    enqueue_output(n_out);
  }
  synchronize("the forward pass");
  std::memcpy(logits, logits_host_, static_cast<size_t>(n_out) * config_.n_vocab * sizeof(float));
}

void LlamaCuda::forward_layers(std::span<const KvBlockCopy> copies, const StepPlan& plan, float* x) {
  copy_kv_blocks(copies);
  const int n_tokens = plan.n_tokens();
  if (n_tokens == 0) {
    synchronize("the KV block copies");
    return;
  }
  upload_step(plan);
  enqueue_step(n_tokens);
  TESSERA_CUDA_CHECK(cudaMemcpyAsync(x, x_, static_cast<size_t>(n_tokens) * config_.n_embd * sizeof(float),
                                     cudaMemcpyDeviceToHost, stream_));
  synchronize("the GPU layers");
}

}  // namespace tessera::cuda
