// Microbenchmarks of the batched decode kernels on random data (needs a GPU and a build with TESSERA_CUDA):
// - matmul_batch against gemm (the matrix decoded to f16, then cuBLAS) for Llama-2-7B's and TinyLlama's matrix
//   shapes at 8..256 tokens, Q4_K and Q6_K; matmul_batch also with its token tile capped at 32 or 64 and without K
//   splits, to choose the plan's policy by measurement. Counters: GB/s of weights (the matrix's bytes in its block
//   format per call) and TFLOP/s (2 * rows * columns * tokens per call). Each call reads the next of enough copies of
//   the matrix to exceed the L2 cache, so the weights come from DRAM as in a forward pass.
// - paged_attention for 1..256 sequences of 512 and 4096 keys with TinyLlama's and Llama-2-7B's heads (f16 cache,
//   blocks of 16 slots handed out in shuffled order). Counter: GB/s of K and V rows read.
// Times are CUDA event times of back-to-back launches. Run: ./build/bench/cuda_batch_bench
// [--benchmark_filter=matmul_batch/llama2_7b] (names: kernel/model/matrix/type/tokens:n).
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cuda/device_layout.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/matmul_batch.h"
#include "backend/cuda/paged_attention.h"
#include "quant/quant.h"

namespace {

using tessera::GgmlType;
namespace cuda = tessera::cuda;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

template <class T>
struct DeviceArray {
  T* ptr = nullptr;
  explicit DeviceArray(size_t n) { check(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc"); }
  ~DeviceArray() { cudaFree(ptr); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
};

constexpr size_t kColdBytes = 256u << 20;  // several times any L2
constexpr int kCallsPerIteration = 10;

// Copies of one random matrix in the device layout: blocks of random bits with small fixed scales (every bit pattern
// of the quants is valid), as bench/cuda_bench.cpp makes them.
struct Matrices {
  GgmlType type;
  int64_t n_rows, n_cols;
  size_t row_bytes, bytes;
  int copies;
  std::unique_ptr<DeviceArray<uint8_t>> data;

  Matrices(GgmlType type_, int64_t n_rows_, int64_t n_cols_) : type(type_), n_rows(n_rows_), n_cols(n_cols_) {
    row_bytes = cuda::device_row_bytes(type, n_cols);
    bytes = row_bytes * n_rows;
    copies = static_cast<int>(std::max<size_t>(2, (kColdBytes + bytes - 1) / bytes));
    const size_t file_row = tessera::ggml_row_bytes(type, n_cols);
    std::vector<uint8_t> file(file_row * n_rows), device(bytes);
    uint64_t state = 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(n_rows * n_cols);
    for (size_t i = 0; i + 8 <= file.size(); i += 8) {
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;
      std::memcpy(file.data() + i, &state, 8);
    }
    const size_t block = type == GgmlType::Q4_K ? 144 : 210, scale_at = type == GgmlType::Q4_K ? 0 : 208;
    const uint16_t d = tessera::quant::fp32_to_fp16(0.0005f);
    for (size_t b = 0; b < file.size() / block; ++b) {
      std::memcpy(file.data() + b * block + scale_at, &d, 2);
      if (type == GgmlType::Q4_K) std::memcpy(file.data() + b * block + 2, &d, 2);
    }
    cuda::to_device_layout(type, file.data(), n_rows, n_cols, device.data());
    data = std::make_unique<DeviceArray<uint8_t>>(bytes * copies);
    for (int c = 0; c < copies; ++c) {
      check(cudaMemcpy(data->ptr + c * bytes, device.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
    }
  }
  cuda::DeviceMatrix matrix(int copy) const {
    return {type, data->ptr + static_cast<size_t>(copy % copies) * bytes, row_bytes, n_cols, n_rows};
  }
};

// The matrices of consecutive benchmarks of one shape and type are made once.
const Matrices& matrices_for(GgmlType type, int64_t n_rows, int64_t n_cols) {
  static std::unique_ptr<Matrices> current;
  if (!current || current->type != type || current->n_rows != n_rows || current->n_cols != n_cols) {
    current.reset();
    current = std::make_unique<Matrices>(type, n_rows, n_cols);
  }
  return *current;
}

// Seconds per call of `launch(i)` over kCallsPerIteration back-to-back calls.
template <class Launch>
double time_calls(Launch&& launch) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  check(cudaEventRecord(start), "cudaEventRecord");
  for (int i = 0; i < kCallsPerIteration; ++i) launch(i);
  check(cudaEventRecord(stop), "cudaEventRecord");
  check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / 1e3 / kCallsPerIteration;
}

void run_timed(benchmark::State& state, const std::function<void(int)>& launch, double bytes, double flops) {
  launch(0);  // warm-up: plans, cuBLAS heuristics, shared-memory limits
  check(cudaDeviceSynchronize(), "warm-up");
  double seconds = 0;
  int64_t calls = 0;
  int next = 1;
  for (auto _ : state) {
    const double s = time_calls([&](int) { launch(next++); });
    state.SetIterationTime(s);
    seconds += s * kCallsPerIteration;
    calls += kCallsPerIteration;
  }
  state.counters["GB/s"] = bytes * static_cast<double>(calls) / seconds / 1e9;
  if (flops > 0) state.counters["TFLOP/s"] = flops * static_cast<double>(calls) / seconds / 1e12;
}

struct MatrixShape {
  const char* model;
  const char* name;
  int64_t n_rows, n_cols;
};
constexpr MatrixShape kMatrices[] = {
    {"llama2_7b", "attn_4096x4096", 4096, 4096},       {"llama2_7b", "ffn_up_11008x4096", 11008, 4096},
    {"llama2_7b", "ffn_down_4096x11008", 4096, 11008}, {"llama2_7b", "output_32000x4096", 32000, 4096},
    {"tinyllama", "attn_q_2048x2048", 2048, 2048},     {"tinyllama", "attn_kv_256x2048", 256, 2048},
    {"tinyllama", "ffn_up_5632x2048", 5632, 2048},     {"tinyllama", "ffn_down_2048x5632", 2048, 5632},
};
constexpr int kTokenCounts[] = {8, 16, 32, 64, 128, 256};

// How a product is computed: gemm, or matmul_batch with the device's plan, its token tile capped, or without K
// splits.
struct Kernel {
  const char* name;
  bool batched;
  int max_tile_tokens;
  bool split;
};
constexpr Kernel kKernels[] = {
    {"gemm", false, 0, false},
    {"matmul_batch", true, 128, true},
    {"matmul_batch_tile32", true, 32, true},
    {"matmul_batch_tile64", true, 64, true},
    {"matmul_batch_nosplit", true, 128, false},
};

void bench_matmul(benchmark::State& state, MatrixShape shape, GgmlType type, int n_tokens, Kernel kernel) {
  try {
    const Matrices& m = matrices_for(type, shape.n_rows, shape.n_cols);
    std::vector<float> x(static_cast<size_t>(n_tokens) * shape.n_cols);
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> dist(-1, 1);
    for (float& v : x) v = dist(rng);
    DeviceArray<float> x32(x.size()), y(static_cast<size_t>(n_tokens) * shape.n_rows);
    DeviceArray<__half> x16(x.size());
    check(cudaMemcpy(x32.ptr, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
    cuda::convert_f32_to_f16(x32.ptr, x16.ptr, static_cast<int64_t>(x.size()), nullptr);
    const double bytes = static_cast<double>(m.bytes), flops = 2.0 * shape.n_rows * shape.n_cols * n_tokens;
    if (kernel.batched) {
      cuda::DeviceLimits limits = cuda::current_device_limits();
      if (!kernel.split) limits.sm_count = 1;
      const cuda::MatmulBatchPlan plan =
          cuda::plan_matmul_batch(type, shape.n_rows, shape.n_cols, n_tokens, limits, kernel.max_tile_tokens);
      DeviceArray<float> workspace(cuda::matmul_batch_workspace_floats(plan, m.matrix(0), n_tokens));
      state.SetLabel("tile " + std::to_string(plan.tile_tokens) + ", " + std::to_string(plan.stages) + " stages, " +
                     std::to_string(plan.splits) + " splits");
      run_timed(
          state,
          [&](int i) {
            cuda::matmul_batch(m.matrix(i), x16.ptr, shape.n_cols, n_tokens, y.ptr, shape.n_rows, false, plan,
                               workspace.ptr, nullptr);
          },
          bytes, flops);
    } else {
      cublasHandle_t handle;
      if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate");
      DeviceArray<__half> scratch(static_cast<size_t>(shape.n_rows) * shape.n_cols);
      run_timed(
          state,
          [&](int i) {
            cuda::gemm(handle, m.matrix(i), x32.ptr, x16.ptr, n_tokens, y.ptr, shape.n_rows, false, scratch.ptr,
                       nullptr);
          },
          bytes, flops);
      cublasDestroy(handle);
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

struct HeadShape {
  const char* model;
  int n_head, n_head_kv, head_dim;
};
constexpr HeadShape kHeads[] = {{"tinyllama", 32, 4, 64}, {"llama2_7b", 32, 32, 128}};

void bench_attention(benchmark::State& state, HeadShape shape, int n_sequences, int n_keys) {
  try {
    const cuda::AttentionParams p{shape.n_head, shape.n_head_kv, shape.head_dim, tessera::KvFormat::F16, tessera::KvFormat::F16};
    constexpr int kBlockSize = 16;
    const int blocks_per_sequence = (n_keys + kBlockSize - 1) / kBlockSize;
    const int64_t n_blocks = static_cast<int64_t>(n_sequences) * blocks_per_sequence;
    const int64_t kv_dim = static_cast<int64_t>(shape.n_head_kv) * shape.head_dim;
    const size_t cache_values = static_cast<size_t>(n_blocks) * kBlockSize * kv_dim;
    DeviceArray<__half> k(cache_values), v(cache_values);
    // Values do not change the work; 0x3C3C is 1.06 in f16.
    check(cudaMemset(k.ptr, 0x3C, cache_values * 2), "cudaMemset");
    check(cudaMemset(v.ptr, 0x3C, cache_values * 2), "cudaMemset");
    std::vector<int32_t> tables(n_blocks), offsets(n_sequences), n_keys_of(n_sequences, n_keys);
    std::iota(tables.begin(), tables.end(), 0);
    std::shuffle(tables.begin(), tables.end(), std::mt19937(2));
    for (int s = 0; s < n_sequences; ++s) offsets[s] = s * blocks_per_sequence;
    DeviceArray<int32_t> d_tables(tables.size()), d_offsets(offsets.size()), d_n_keys(n_keys_of.size());
    check(cudaMemcpy(d_tables.ptr, tables.data(), tables.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
    check(cudaMemcpy(d_offsets.ptr, offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
    check(cudaMemcpy(d_n_keys.ptr, n_keys_of.data(), n_keys_of.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
    const int64_t q_values = static_cast<int64_t>(n_sequences) * shape.n_head * shape.head_dim;
    DeviceArray<float> q(q_values), out(q_values);
    check(cudaMemset(q.ptr, 0, q_values * 4), "cudaMemset");
    const int splits = cuda::paged_attention_splits(p, n_sequences, n_keys);
    DeviceArray<float> workspace(cuda::paged_attention_workspace_floats(p, n_sequences, splits));
    const cuda::PagedKeys keys{d_tables.ptr, d_offsets.ptr, d_n_keys.ptr, nullptr, kBlockSize};
    cuda::paged_attention_prepare(p);
    state.SetLabel(std::to_string(splits) + " splits");
    const double bytes = 2.0 * n_sequences * static_cast<double>(n_keys) * kv_dim * 2;
    run_timed(
        state,
        [&](int) {
          cuda::paged_attention(p, q.ptr, k.ptr, v.ptr, keys, n_sequences, splits, workspace.ptr, out.ptr, nullptr,
                                nullptr);
        },
        bytes, 0);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void register_all() {
  for (const MatrixShape& shape : kMatrices) {
    for (const GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K}) {
      for (const int n_tokens : kTokenCounts) {
        for (const Kernel& kernel : kKernels) {
          // A cap at or above the tile the tokens need is the plain plan.
          if (kernel.max_tile_tokens != 128 && kernel.batched && n_tokens <= kernel.max_tile_tokens) continue;
          const std::string name = std::string(kernel.name) + "/" + shape.model + "/" + shape.name + "/" +
                                   std::string(tessera::ggml_type_name(type)) + "/tokens:" + std::to_string(n_tokens);
          benchmark::RegisterBenchmark(
              name.c_str(), [=](benchmark::State& state) { bench_matmul(state, shape, type, n_tokens, kernel); })
              ->UseManualTime()
              ->Unit(benchmark::kMicrosecond)
              ->MinTime(0.2);
        }
      }
    }
  }
  for (const HeadShape& shape : kHeads) {
    for (const int n_sequences : {1, 32, 128, 256}) {
      for (const int n_keys : {512, 4096}) {
        const std::string name = std::string("paged_attention/") + shape.model +
                                 "/sequences:" + std::to_string(n_sequences) + "/keys:" + std::to_string(n_keys);
        benchmark::RegisterBenchmark(
            name.c_str(), [=](benchmark::State& state) { bench_attention(state, shape, n_sequences, n_keys); })
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond)
            ->MinTime(0.2);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
