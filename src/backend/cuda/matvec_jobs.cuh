// The jobs of one decode matvec launch (up to kMaxMatvecJobs matrices of one width), cut into groups of
// rows that one thread block each takes; shared by the f32 and the integer decode kernels.
#pragma once

#include <stdexcept>

#include "backend/cuda/kernels.h"

namespace tessera::cuda {

struct MatvecGroups {
  MatvecJob jobs[kMaxMatvecJobs];
  int group_start[kMaxMatvecJobs + 1];  // first row group of each job; group_start[n_jobs] = all groups
  int n_jobs;
  int rows_per_group;
};

inline MatvecGroups make_matvec_groups(const MatvecJob* jobs, int n_jobs, int rows_per_group) {
  if (n_jobs < 1 || n_jobs > kMaxMatvecJobs) throw std::runtime_error("matvec: bad job count");
  MatvecGroups g{};
  g.n_jobs = n_jobs;
  g.rows_per_group = rows_per_group;
  int groups = 0;
  for (int j = 0; j < n_jobs; ++j) {
    if (jobs[j].w.n_cols != jobs[0].w.n_cols) {
      throw std::runtime_error("matvec: the matrices of one launch must share width");
    }
    g.jobs[j] = jobs[j];
    g.group_start[j] = groups;
    groups += static_cast<int>((jobs[j].w.n_rows + rows_per_group - 1) / rows_per_group);
  }
  g.group_start[n_jobs] = groups;
  return g;
}

__device__ __forceinline__ int job_of(const MatvecGroups& g, int group) {
  return g.n_jobs > 1 && group >= g.group_start[1] ? (g.n_jobs > 2 && group >= g.group_start[2] ? 2 : 1) : 0;
}

// A copy of job j; selecting by value keeps the kernel parameters in constant memory (indexing them with a
// run-time j would copy the whole array to local memory).
__device__ __forceinline__ MatvecJob job_at(const MatvecGroups& g, int j) {
  return j == 0 ? g.jobs[0] : j == 1 ? g.jobs[1] : g.jobs[2];
}

}  // namespace tessera::cuda
