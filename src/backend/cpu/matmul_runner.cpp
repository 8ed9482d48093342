#include "backend/cpu/matmul_runner.h"

#include <algorithm>
#include <stdexcept>

#include "backend/cpu/attention.h"
#include "quant/interleaved.h"
#include "quant/quant.h"

namespace tessera::cpu {
namespace {

constexpr int64_t kGemmTokenBlock = 64;  // activation rows per kernel call: they stay in L2 with the weights
constexpr int64_t kSwigluPiece = 256;    // SwiGLU values quantized together: whole blocks of any format
// The smallest claim of rows (RowRanges) in weight bytes: a claim's own cost (its bookkeeping and a kernel call)
// stays small beside its reading; 32 KB did best in paired decode runs, and claims of a fixed size did worse
// (docs/notes/2026-11-27-cpu-row-sharing.md).
constexpr int64_t kMinClaimBytes = 32 << 10;

template <class T>
void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

void MatmulRunner::interleave(std::span<const model::MatrixView* const> matrices, const gguf::File* file) {
  // One buffer for all of them: huge pages are only worth it without a partly used page per matrix.
  std::vector<std::pair<const model::MatrixView*, size_t>> placed;  // matrix, offset in the buffer
  size_t total = 0;
  for (const model::MatrixView* m : matrices) {
    if (!quant::interleaved_available(m->type, m->n_rows, m->n_cols)) continue;
    placed.emplace_back(m, total);
    total += (quant::interleaved_bytes(m->type, m->n_rows, m->n_cols) + 63) / 64 * 64;
  }
  if (placed.empty()) return;
  interleaved_buffer_ = HugePageBuffer(total);
  for (const auto& [m, offset] : placed) {
    uint8_t* packed = interleaved_buffer_.data() + offset;
    pool_.parallel_for(m->n_rows / quant::kInterleavedRows, [&](int64_t g, int) {
      quant::interleave_rows(m->type, m->data, m->row_bytes, m->n_cols, g * quant::kInterleavedRows,
                             (g + 1) * quant::kInterleavedRows, packed);
    });
    if (file) file->release_pages(m->data, m->bytes());
    interleaved_.emplace(m, packed);
  }
}

MatmulRunner::Resolved MatmulRunner::resolve(const Job& job, const uint8_t* xq, size_t xq_row_bytes) const {
  const auto interleaved = interleaved_.find(job.w);
  return {job.w, job.y, interleaved == interleaved_.end() ? nullptr : interleaved->second, xq, xq_row_bytes};
}

size_t MatmulRunner::prepare(std::initializer_list<Job> jobs, const float* x, int64_t n_tokens,
                         std::array<Resolved, kMaxJobs>& resolved) {
  // Quantize x once for each distinct activation format the weights need (at most one per job).
  struct Prepared {
    GgmlType weight_type;  // a weight type that needs this activation format
    GgmlType act_type;
    size_t row_bytes;
    size_t offset;
  };
  if (jobs.size() > kMaxJobs) throw std::logic_error("MatmulRunner::matmuls: too many jobs");
  std::array<Prepared, kMaxJobs> prepared;
  std::array<size_t, kMaxJobs> job_input;
  size_t n_prepared = 0, n_jobs = 0, total = 0;
  const int64_t n_cols = jobs.begin()->w->n_cols;
  for (const Job& job : jobs) {
    const GgmlType act = quant::activation_type(job.w->type);
    size_t p = 0;
    while (p < n_prepared && prepared[p].act_type != act) ++p;
    if (p == n_prepared) {
      const size_t rb = quant::activation_row_bytes(job.w->type, n_cols);
      prepared[n_prepared++] = {job.w->type, act, rb, total};
      total += rb * n_tokens;
    }
    job_input[n_jobs++] = p;
  }
  grow(xq_, total);
  pool_.parallel_for(static_cast<int64_t>(n_prepared) * n_tokens, [&](int64_t task, int) {
    const Prepared& p = prepared[task / n_tokens];
    const int64_t t = task % n_tokens;
    quant::quantize_activations(p.weight_type, x + t * n_cols, xq_.data() + p.offset + t * p.row_bytes, n_cols);
  });
  size_t j = 0;
  for (const Job& job : jobs) {
    const Prepared& p = prepared[job_input[j]];
    resolved[j++] = resolve(job, xq_.data() + p.offset, p.row_bytes);
  }
  return n_jobs;
}

void MatmulRunner::multiply_rows(const Resolved& job, int64_t row_begin, int64_t row_end, int64_t n_tokens) {
  const model::MatrixView& w = *job.w;
  for (int64_t t0 = 0; t0 < n_tokens; t0 += kGemmTokenBlock) {
    const int64_t nt = std::min(kGemmTokenBlock, n_tokens - t0);
    float* y = job.y + t0 * w.n_rows;
    const uint8_t* xq = job.xq + t0 * job.xq_row_bytes;
    if (job.interleaved) {
      quant::gemm_interleaved(w.type, job.interleaved, w.n_cols, row_begin, row_end, xq, job.xq_row_bytes, nt, y,
                              w.n_rows);
    } else {
      quant::gemm(w.type, w.data, w.row_bytes, w.n_cols, row_begin, row_end, xq, job.xq_row_bytes, nt, y, w.n_rows);
    }
  }
}

template <class OnClaim>
void MatmulRunner::for_each_claim(std::span<const int64_t> job_rows, size_t row_bytes, const OnClaim& on_claim) {
  ranges_.reset(job_rows, quant::kInterleavedRows, pool_.size(),
                std::max<int64_t>(1, kMinClaimBytes / static_cast<int64_t>(row_bytes * quant::kInterleavedRows)));
  pool_.parallel_for(pool_.size(), [&](int64_t part, int) {
    RowRanges::Claim claim;
    while (ranges_.next(static_cast<int>(part), claim)) on_claim(claim);
  });
}

void MatmulRunner::run(std::span<const Resolved> jobs, int64_t n_tokens) {
  std::array<int64_t, kMaxJobs> job_rows;
  for (size_t j = 0; j < jobs.size(); ++j) job_rows[j] = jobs[j].w->n_rows;
  for_each_claim(std::span(job_rows.data(), jobs.size()), jobs[0].w->row_bytes, [&](const RowRanges::Claim& claim) {
    multiply_rows(jobs[claim.job], claim.row_begin, claim.row_end, n_tokens);
  });
}

void MatmulRunner::matmuls(std::initializer_list<Job> jobs, const float* x, int64_t n_tokens) {
  std::array<Resolved, kMaxJobs> resolved;
  const size_t n_jobs = prepare(jobs, x, n_tokens, resolved);
  run(std::span(resolved.data(), n_jobs), n_tokens);
}

void MatmulRunner::swiglu_feed_forward(const model::MatrixView& w_gate, const model::MatrixView& w_up,
                                       const model::MatrixView& w_down, const float* x, int64_t n_tokens, float* gate,
                                       float* up, float* proj) {
  const int64_t n_ff = w_gate.n_rows;
  const quant::SimdLevel level = quant::active_simd_level();
  if (n_tokens >= pool_.size()) {
    // Prompt rows: every thread has whole rows to apply SwiGLU to and to quantize.
    matmuls({{&w_gate, gate}, {&w_up, up}}, x, n_tokens);
    pool_.parallel_for(n_tokens, [&](int64_t t, int) {
      float* g = gate + t * n_ff;
      swiglu_at(level, g, up + t * n_ff, g, n_ff);
    });
    matmuls({{&w_down, proj}}, gate, n_tokens);
    return;
  }
  // Fewer rows than threads (decode): no thread waits while another quantizes the row.
  std::array<Resolved, kMaxJobs> resolved;
  prepare({{&w_gate, gate}, {&w_up, up}}, x, n_tokens, resolved);
  const size_t down_row_bytes = quant::activation_row_bytes(w_down.type, n_ff);
  grow(swiglu_xq_, down_row_bytes * n_tokens);
  const int64_t n_pieces = (n_ff + kSwigluPiece - 1) / kSwigluPiece;
  if (static_cast<int64_t>(piece_rows_done_.size()) < n_pieces) {
    piece_rows_done_ = std::vector<std::atomic<int64_t>>(n_pieces);
  }
  for (int64_t p = 0; p < n_pieces; ++p) piece_rows_done_[p].store(0, std::memory_order_relaxed);
  const int64_t rows[] = {n_ff, n_ff};
  for_each_claim(rows, w_gate.row_bytes, [&](const RowRanges::Claim& claim) {
    multiply_rows(resolved[claim.job], claim.row_begin, claim.row_end, n_tokens);
    for (int64_t p = claim.row_begin / kSwigluPiece; p * kSwigluPiece < claim.row_end; ++p) {
      const int64_t begin = p * kSwigluPiece, end = std::min(n_ff, begin + kSwigluPiece);
      const int64_t mine = std::min(claim.row_end, end) - std::max(claim.row_begin, begin);
      // acq_rel: the thread that completes the piece sees the rows of it that other threads computed.
      if (piece_rows_done_[p].fetch_add(mine, std::memory_order_acq_rel) + mine != 2 * (end - begin)) continue;
      const size_t offset = quant::activation_row_bytes(w_down.type, begin);
      for (int64_t t = 0; t < n_tokens; ++t) {
        float* g = gate + t * n_ff + begin;
        swiglu_at(level, g, up + t * n_ff + begin, g, end - begin);
        quant::quantize_activations(w_down.type, g, swiglu_xq_.data() + t * down_row_bytes + offset, end - begin);
      }
    }
  });
  const Resolved down = resolve({&w_down, proj}, swiglu_xq_.data(), down_row_bytes);
  run(std::span(&down, 1), n_tokens);
}


}  // namespace tessera::cpu
