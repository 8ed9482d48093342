// The matrix products of the CPU forward pass and how their rows are shared among the threads. Each call is one
// parallel loop of the thread pool over the rows of its matrices (q, k and v together; gate and up together);
// RowRanges (row_ranges.h) gives each thread its own contiguous share, so a decode step reads each matrix as one
// stream per thread. Activations are quantized once per call, to each format the weights' kernels read.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <unordered_map>
#include <vector>

#include "backend/cpu/huge_page_buffer.h"
#include "backend/cpu/row_ranges.h"
#include "backend/cpu/thread_pool.h"
#include "model/llama.h"

namespace tessera::cpu {

class MatmulRunner {
 public:
  explicit MatmulRunner(ThreadPool& pool) : pool_(pool) {}

  // Rearranges the matrices this CPU has an interleaved kernel for (quant/interleaved.h) into one buffer on huge
  // pages, once; the file's pages of each are released afterwards (when `file` is given), so the model stays
  // resident once.
  void interleave(std::span<const model::MatrixView* const> matrices, const gguf::File* file);
  // The repacked matrices, which decode streams once per token.
  std::span<const uint8_t> interleaved_weights() const {
    return {interleaved_buffer_.data(), interleaved_buffer_.size()};
  }

  // y[t] = W x[t] for each (W, y) pair, all in one parallel loop; every W has x's width.
  struct Job {
    const model::MatrixView* w;
    float* y;  // [n_tokens][w->n_rows]
  };
  static constexpr size_t kMaxJobs = 3;
  void matmuls(std::initializer_list<Job> jobs, const float* x, int64_t n_tokens);

  // proj = W_down (silu(W_gate x) * W_up x). gate and up ([n_tokens][n_ff]) are scratch: gate holds the SwiGLU
  // afterwards. With fewer tokens than threads (decode), the thread that completes a piece of gate and up rows
  // applies SwiGLU to it and quantizes it for the down projection, so neither needs a parallel loop of its own.
  void swiglu_feed_forward(const model::MatrixView& w_gate, const model::MatrixView& w_up,
                           const model::MatrixView& w_down, const float* x, int64_t n_tokens, float* gate, float* up,
                           float* proj);

 private:
  // A job with its weights' layout and its quantized input.
  struct Resolved {
    const model::MatrixView* w;
    float* y;
    const uint8_t* interleaved;  // null: the GGUF layout
    const uint8_t* xq;           // [n_tokens][xq_row_bytes]
    size_t xq_row_bytes;
  };
  Resolved resolve(const Job& job, const uint8_t* xq, size_t xq_row_bytes) const;
  // Quantizes x into xq_ once per activation format the jobs need; returns the number of jobs resolved.
  size_t prepare(std::initializer_list<Job> jobs, const float* x, int64_t n_tokens,
                 std::array<Resolved, kMaxJobs>& resolved);
  void multiply_rows(const Resolved& job, int64_t row_begin, int64_t row_end, int64_t n_tokens);
  // on_claim(claim) for every claim of these jobs' rows, shared out among the threads by ranges_; row_bytes (of
  // the first job) sizes the smallest claim.
  template <class OnClaim>
  void for_each_claim(std::span<const int64_t> job_rows, size_t row_bytes, const OnClaim& on_claim);
  void run(std::span<const Resolved> jobs, int64_t n_tokens);

  ThreadPool& pool_;
  HugePageBuffer interleaved_buffer_;
  std::unordered_map<const model::MatrixView*, const uint8_t*> interleaved_;
  std::vector<uint8_t> xq_;         // quantized activations, [n_tokens][activation row bytes]
  std::vector<uint8_t> swiglu_xq_;  // the down projection's quantized input, [n_tokens][activation row bytes]
  std::vector<std::atomic<int64_t>> piece_rows_done_;  // decode feed-forward: gate and up rows done per piece
  RowRanges ranges_;
};

}  // namespace tessera::cpu
