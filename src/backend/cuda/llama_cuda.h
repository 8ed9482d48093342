// The llama forward pass on one NVIDIA GPU: weights uploaded once in their block formats, the KV cache in device
// memory, per step only token ids, positions and cache slots go in and logits come out. Steps of up to
// kMaxMatvecTokens tokens (decode) run the matrix-vector kernels and are replayed from a captured CUDA graph;
// larger steps (prompts) run cuBLAS on the tensor cores.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/kernels.h"
#include "model/llama.h"

namespace tessera::cuda {

class LlamaCuda {
 public:
  // Puts layers [0, n_layers) on the GPU, and with `with_output` also the final norm and output projection
  // (which needs n_layers == n_layer). Throws std::runtime_error when there is no GPU, a weight type has no
  // kernel, or the GPU has too little free memory (naming needed and available MiB).
  LlamaCuda(const model::LlamaModel& model, const BackendOptions& options, int n_layers, bool with_output);
  ~LlamaCuda();
  LlamaCuda(const LlamaCuda&) = delete;
  LlamaCuda& operator=(const LlamaCuda&) = delete;

  // The whole model: logits [output_rows.size()][n_vocab] into host memory.
  void forward(const ForwardBatch& batch, float* logits);
  // Embedding and the GPU's layers; the residual stream [n_tokens][n_embd] is copied to host memory `x`.
  void forward_layers(const ForwardBatch& batch, float* x);

  uint64_t kv_cache_bytes() const { return kv_bytes_; }
  const std::string& device_name() const { return device_name_; }

 private:
  struct LayerWeights {
    const float* attn_norm;
    const float* ffn_norm;
    DeviceMatrix wq, wk, wv, wo, w_gate, w_up, w_down;
  };
  struct MatmulTarget {
    const DeviceMatrix* w;
    float* y;
  };

  void allocate_activations(int capacity);
  void upload_step(const ForwardBatch& batch);
  void enqueue_layers(int n_tokens);
  void enqueue_output(int n_tokens, int n_out);
  // y = W x for each target (all of one width); xq: x already quantized (decode only), or none; x16: x's f16
  // copy already made by x's producer (prompt only, see prompt_f16), or none. Decode only: norm, x is a fused
  // RMSNorm's unscaled output (NormScale); next_norm (one target, accumulate), fuse the next RMSNorm with these
  // norm weights into the launch (matvec_norm, into norm_q8() and norm_sums_).
  void matmuls(std::initializer_list<MatmulTarget> targets, const float* x, const Q8Rows& xq, const __half* x16,
               int n_tokens, bool accumulate, const NormScale& norm = {}, const float* next_norm = nullptr);
  // Decode: whether layer il's attention (ffn) RMSNorm is fused into the matvecs around it, which needs integer
  // kernels for its producer (the previous layer's down projection; Wo) and all its consumers.
  bool fuses_attn_norm(int il, int n_tokens) const;
  bool fuses_ffn_norm(int il, int n_tokens) const;
  // Decode, one token: whether layer il's gate/up launch also applies SwiGLU and quantizes for the down
  // projection (matvec_swiglu), which needs its fused ffn norm (the input must not be the Q8 buffer it writes).
  bool fuses_swiglu(int il, int n_tokens) const;
  // The fused RMSNorm output of a decode step, [n_tokens][n_embd] quantized.
  Q8Rows norm_q8() const { return Q8Rows{norm_q8_, norm_q8_ds_, config_.n_embd}; }
  // The quantized-activation buffer as rows of `width`, or none where the decode kernels cannot use it (more than
  // kMaxMatvecTokens tokens, or a width that is not whole Q8 blocks).
  Q8Rows decode_q8(int width, int n_tokens) const;
  // The GEMM path's f16 input buffer, for the kernel that makes a prompt step's matmul input to fill as well (one
  // f32 -> f16 pass less per matmul), or none in decode steps.
  __half* prompt_f16(int n_tokens) const;
  void free_graphs();
  void synchronize(const char* what);

  const model::LlamaModel& model_;
  const model::LlamaConfig& config_;
  int n_layers_;
  bool with_output_;
  bool f16_cache_;
  int n_slots_;
  bool use_graphs_;
  int sm_count_ = 0;
  std::string device_name_;

  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;

  // Weights: one allocation, views into it.
  void* weight_arena_ = nullptr;
  std::vector<LayerWeights> layers_;
  DeviceMatrix token_embd_, output_;
  const float* output_norm_ = nullptr;
  const float* freq_factors_ = nullptr;

  // KV cache: per layer [n_slots][kv_dim], f16 or f32.
  void* kv_arena_ = nullptr;
  std::vector<void*> k_cache_, v_cache_;
  uint64_t kv_bytes_ = 0;

  // Activations for up to capacity_ tokens per step (one allocation).
  int capacity_ = 0;
  void* activation_arena_ = nullptr;
  float* x_ = nullptr;         // residual stream [n_tokens][n_embd]
  float* norm_ = nullptr;      // [n_tokens][n_embd]
  float* q_ = nullptr;         // [n_tokens][q_dim]
  float* k_ = nullptr;         // [n_tokens][kv_dim]
  float* v_ = nullptr;         // [n_tokens][kv_dim]
  float* attn_ = nullptr;      // [n_tokens][q_dim]
  float* gate_ = nullptr;      // [n_tokens][n_ff]
  float* up_ = nullptr;        // [n_tokens][n_ff]
  float* logits_ = nullptr;    // [n_tokens][n_vocab]
  __half* x16_ = nullptr;      // f16 copy of a matmul input [n_tokens][max(n_embd, q_dim, n_ff)]
  int8_t* q8_ = nullptr;       // a decode matvec input quantized [kMaxMatvecTokens][max width] (Q8Rows)
  float2* q8_ds_ = nullptr;    // and its block scales [kMaxMatvecTokens][max width / 32]
  // A fused RMSNorm's output (NormOutput): [kMaxMatvecTokens][n_embd] quantized, its block scales, and the sums
  // of squares [kMaxMatvecTokens][n_embd / 32]. Apart from q8_, which its producer reads.
  int8_t* norm_q8_ = nullptr;
  float2* norm_q8_ds_ = nullptr;
  float* norm_sums_ = nullptr;
  __half* w16_ = nullptr;      // one weight matrix decoded to f16, for the tensor-core path
  float* partials_ = nullptr;  // flash-decoding partial results
  int max_splits_ = 1;
  // Decode attention: whether decode_attention (RoPE, KV store, Q8 output fused) serves this model, and the
  // current step's key split count (chosen by its longest sequence).
  bool fused_decode_attention_ = false;
  int decode_splits_ = 1;
  // Prompt attention on the tensor cores (f16 cache): the current step's sequences, when the step takes that path.
  std::vector<PromptSequence> prompt_sequences_;
  bool use_prompt_attention_ = false;

  // Per-step inputs: host pinned mirror and device copy, sections of capacity_ entries then the slot table.
  int table_capacity_ = 0;
  int32_t* step_host_ = nullptr;
  int32_t* step_device_ = nullptr;
  size_t step_used_ = 0;          // int32s of the current step to upload
  float* logits_host_ = nullptr;  // pinned [capacity_][n_vocab]

  int32_t* tokens_d() const { return step_device_; }
  int32_t* positions_d() const { return step_device_ + capacity_; }
  int32_t* write_slots_d() const { return step_device_ + 2 * capacity_; }
  int32_t* slot_offsets_d() const { return step_device_ + 3 * capacity_; }
  int32_t* output_rows_d() const { return step_device_ + 4 * capacity_; }
  int32_t* prompt_rows_d() const { return step_device_ + 5 * capacity_; }  // token indices grouped by sequence
  int32_t* slot_table_d() const { return step_device_ + 6 * capacity_; }

  using GraphKey = std::tuple<int, int, int>;  // (n_tokens, n_out, decode_splits_)
  std::map<GraphKey, cudaGraphExec_t> graphs_;  // -> the captured decode step
};

}  // namespace tessera::cuda
