// The llama forward pass on one NVIDIA GPU: weights uploaded once in their block formats (gpu_weights.h), the KV
// cache in device memory, per step only the plan's token ids, positions, slots and block tables go in and logits
// come out. Steps of up to kMaxMatvecTokens tokens (decode) run the matrix-vector kernels with their fusions and are
// replayed from captured CUDA graphs; larger steps (prompts) run cuBLAS on the tensor cores.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <map>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/gpu_weights.h"
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

  // The whole model: logits [n_outputs][n_vocab] into host memory.
  void forward(std::span<const KvBlockCopy> copies, const StepPlan& plan, float* logits);
  // Embedding and the GPU's layers; the residual stream [n_tokens][n_embd] is copied to host memory `x`.
  void forward_layers(std::span<const KvBlockCopy> copies, const StepPlan& plan, float* x);
  // A context shift in the GPU's layers (Backend::shift).
  void shift(std::span<const KvBlockCopy> copies, const KvShift& shift);

  uint64_t kv_cache_bytes() const { return kv_bytes_; }
  const std::string& device_name() const { return device_name_; }

 private:
  // A matmul's input: x in f32 and the copies its producer made on the way, which spare a conversion.
  struct MatmulInput {
    const float* x = nullptr;     // [n_tokens][n_cols]; null where only q8 exists (a fused norm's output)
    Q8Rows q8;                    // decode: x quantized for the integer kernels, or none (quantized here if needed)
    const __half* x16 = nullptr;  // prompt: x in f16 for the tensor cores, or null (converted here)
    NormScale norm;               // decode: q8 is a fused RMSNorm's output still to be scaled by 1 / rms
  };
  enum class Accumulate { No, Yes };  // y = W x, or y += W x (the residual add fused in)
  struct MatmulTarget {
    const DeviceMatrix* w;
    float* y;
  };

  // The step's inputs in device (and pinned host) memory, by name; sections() computes the one layout.
  struct StepInputs {
    KeyWindow* windows = nullptr;      // [token_capacity] (two ints each, so first: 8-byte aligned)
    int32_t* tokens = nullptr;         // [token_capacity]
    int32_t* positions = nullptr;      // [token_capacity]
    int32_t* write_slots = nullptr;    // [token_capacity] where each token's key and value go
    int32_t* table_offsets = nullptr;  // [token_capacity] where its sequence's blocks start in block_table
    int32_t* output_rows = nullptr;    // [token_capacity]
    int32_t* block_table = nullptr;    // [table_capacity]
  };
  StepInputs sections(int32_t* base) const;

  void allocate_activations(int token_capacity);
  void allocate_step_inputs(int token_capacity, int table_capacity);
  void copy_kv_blocks(std::span<const KvBlockCopy> copies);
  void upload_step(const StepPlan& plan);
  void enqueue_step(int n_tokens);
  void decode_layer(int il, int n_tokens);
  void prompt_layer(int il, int n_tokens);
  void enqueue_output(int n_out);
  void matmuls(std::initializer_list<MatmulTarget> targets, const MatmulInput& input, int n_tokens,
               Accumulate accumulate);
  // Decode: y += W x (one target) with the next RMSNorm's part fused into the launch (matvec_norm; its output goes
  // to norm_q8() and norm_sums_).
  void matmul_then_norm(const MatmulTarget& target, const MatmulInput& input, int n_tokens,
                        const float* next_norm_weight);
  // Decode: whether layer il's attention (ffn) RMSNorm is fused into the matvecs around it, which needs integer
  // kernels for its producer (the previous layer's down projection; Wo) and all its consumers.
  bool fuses_attn_norm(int il) const;
  bool fuses_ffn_norm(int il) const;
  // Decode, one token: whether layer il's gate/up launch also applies SwiGLU and quantizes for the down
  // projection (matvec_swiglu), which needs its fused ffn norm (the input must not be the Q8 buffer it writes).
  bool fuses_swiglu(int il, int n_tokens) const;
  // The fused RMSNorm output of a decode step, [n_tokens][n_embd] quantized.
  Q8Rows norm_q8() const { return Q8Rows{norm_q8_, norm_q8_ds_, config_.n_embd}; }
  // The quantized-activation buffer as rows of `width`, or none where the decode kernels cannot use it (a width
  // that is not whole Q8 blocks).
  Q8Rows decode_q8(int width) const;
  RopeParams rope_params() const;
  AttentionParams attention_params() const;
  void free_graphs();
  void synchronize(const char* what);

  const model::LlamaModel& model_;
  const model::LlamaConfig& config_;
  int n_layers_;
  bool with_output_;
  KvFormats kv_format_;
  int n_slots_;
  int kv_block_size_;
  bool use_graphs_;
  int sm_count_ = 0;
  std::string device_name_;

  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  GpuWeights weights_;

  // KV cache: per layer, keys and values of n_slots rows of kv_dim values in kv_format_ (kernels.h).
  void* kv_arena_ = nullptr;
  std::vector<KvCache> k_cache_, v_cache_;
  uint64_t kv_bytes_ = 0;

  // Activations for up to token_capacity_ tokens per step (one allocation).
  int token_capacity_ = 0;
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
  bool step_has_windows_ = false;  // some run of the current step has a sliding window

  // Per-step inputs: a pinned host mirror and the device copy, in the sections of StepInputs.
  int input_capacity_ = 0;  // tokens
  int table_capacity_ = 0;  // block table entries
  int32_t* step_host_ = nullptr;
  int32_t* step_device_ = nullptr;
  StepInputs host_, device_;
  float* logits_host_ = nullptr;  // pinned [token_capacity_][n_vocab]

  using GraphKey = std::tuple<int, int, int>;  // (n_tokens, n_out, decode_splits_)
  std::map<GraphKey, cudaGraphExec_t> graphs_;  // -> the captured decode step
};

}  // namespace tessera::cuda
