// The integer decode kernels (matvec_q8.cu), which matvec() hands the weight types below to.
#pragma once

#include "backend/cuda/kernels.h"
#include "backend/cuda/matvec_jobs.cuh"

namespace tessera::cuda {

constexpr bool has_q8_kernel(GgmlType type) {
  return type == GgmlType::Q4_0 || type == GgmlType::Q8_0 || type == GgmlType::Q4_K || type == GgmlType::Q5_K ||
         type == GgmlType::Q6_K;
}

// y = W xq for each of the n_jobs jobs (one type and width); xq.ld == n_cols; norm as for matvec().
void matvec_q8(const MatvecJob* jobs, int n_jobs, const Q8Rows& xq, int n_tokens, const NormScale& norm,
               cudaStream_t stream);

// Whether one launch takes jobs of type `first` followed by jobs of type `second` (see matvec_mixes_types).
bool matvec_q8_mixes(GgmlType first, GgmlType second, int64_t n_cols, int n_tokens);
// One token: jobs [0, first_second_type_job) of one type, the others of a second; matvec_q8_mixes must hold.
void matvec_q8_mixed(const MatvecJob* jobs, int n_jobs, int first_second_type_job, const Q8Rows& xq,
                     const NormScale& norm, cudaStream_t stream);
// matvec_norm for the integer types.
void matvec_q8_norm(const MatvecJob& job, const Q8Rows& xq, int n_tokens, const NormOutput& norm,
                    cudaStream_t stream);
// matvec_swiglu for the integer types.
void matvec_q8_swiglu(const DeviceMatrix& gate, const DeviceMatrix& up, const Q8Rows& xq, const NormScale& norm,
                      const Q8Rows& out, cudaStream_t stream);

}  // namespace tessera::cuda
