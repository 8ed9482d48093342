// Shared helpers of the CUDA tests: skip without a GPU, device buffers, and the closeness check.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

namespace tessera::cuda::test {

// Empty when a GPU is usable; otherwise why not.
inline std::string gpu_unavailable_reason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) return std::string("no CUDA GPU: ") + cudaGetErrorString(err);
  if (n == 0) return "no CUDA GPU: no devices";
  return "";
}

#define TESSERA_REQUIRE_GPU()                                                   \
  do {                                                                          \
    const std::string reason = ::tessera::cuda::test::gpu_unavailable_reason(); \
    if (!reason.empty()) GTEST_SKIP() << reason << " (CUDA tests need a GPU)";  \
  } while (0)

// A device buffer that frees itself.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (cudaMalloc(&ptr_, std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) throw std::runtime_error("cudaMalloc");
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void upload(const std::vector<T>& host) {
    if (cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice) != cudaSuccess) {
      throw std::runtime_error("cudaMemcpy to device");
    }
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    if (cudaDeviceSynchronize() != cudaSuccess ||
        cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost) != cudaSuccess) {
      throw std::runtime_error("cudaMemcpy to host");
    }
    return host;
  }
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

// Expects |got - want| <= abs_tol + rel_tol * |want| everywhere; reports the worst element and the count.
inline void expect_close(const std::vector<float>& got, const std::vector<float>& want, double abs_tol, double rel_tol,
                         const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0, worst = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(got[i]) - want[i]);
    const double limit = abs_tol + rel_tol * std::fabs(want[i]);
    if (!(diff <= limit)) ++bad;
    const double excess = std::isnan(diff) ? 1e30 : diff - limit;
    if (excess > worst_excess) worst_excess = excess, worst = i;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " values off; worst at " << worst << ": got "
                     << got[worst] << ", want " << want[worst];
}

}  // namespace tessera::cuda::test
