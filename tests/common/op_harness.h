// The op-test harness: does an op, a backend or a KV cache format give the reference's result? A check computes
// values with the thing under test and with a double-precision reference, and compares them under a tolerance;
// a grid runs it over shapes x KV cache formats x backends. Failures explain themselves (llm.c's habit): the
// cell, how many values are off, the largest difference and where, and the first few values that differ.
//
// How something new plugs in:
// - An op: write its reference as plain loops in double (as model/llama_reference.cpp's steps), give its shapes a
//   `name` (odd sizes, one token and many), and call for_each_cell; in the callback, run the op on cell.backend
//   and EXPECT_TRUE(all_close(got, want, tolerance)).
// - A backend: register it in BackendRegistry (backend/backend.h). Grids name the backends they cover and skip
//   those this build or machine cannot run, saying why; every forward-pass grid that names it then covers it.
// - A KV cache format: say in kv_rounding how the reference rounds for it (a model::KvRounding, written in
//   model/llama_reference.cpp from the format's definition) and add it to kKvFormats; the forward-pass grids
//   (tests/model, tests/cuda) then run every model through it.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/kv_format.h"
#include "backend/step_plan.h"
#include "gguf/gguf.h"
#include "model/llama.h"
#include "model/llama_reference.h"

namespace tessera::test {

// |got - want| <= abs + rel * |want|
struct Tolerance {
  double abs = 0;
  double rel = 0;
};

// One fixture model of the forward-pass grids (models/tiny-llama-<name>.gguf) and how close each backend must come
// to the reference with an f32 and an f16 KV cache; the reasons for each backend's tolerances sit with its list.
struct WeightCase {
  std::string name;
  Tolerance f32_cache;
  Tolerance f16_cache;
};
inline std::ostream& operator<<(std::ostream& os, const WeightCase& c) { return os << c.name; }
// A GoogleTest parameter name for a case: its name with '-' (not allowed there) as '_'.
inline std::string weight_case_test_name(const ::testing::TestParamInfo<WeightCase>& info) {
  std::string n = info.param.name;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

// Compares `got` with the reference's `want`, value by value. With row_length > 0, indices print as [row][column].
template <class Got, class Want>
::testing::AssertionResult all_close(const Got& got, const Want& want, Tolerance tol, size_t row_length = 0) {
  constexpr int kShown = 5;
  if (std::size(got) != std::size(want)) {
    return ::testing::AssertionFailure() << std::size(got) << " values, the reference has " << std::size(want);
  }
  auto where = [&](size_t i) {
    return row_length > 0 ? "[" + std::to_string(i / row_length) + "][" + std::to_string(i % row_length) + "]"
                          : "[" + std::to_string(i) + "]";
  };
  size_t n_off = 0, worst = 0;
  double max_diff = 0;
  std::ostringstream first;
  for (size_t i = 0; i < std::size(got); ++i) {
    const double g = got[i], w = want[i], diff = std::abs(g - w);
    if (diff > max_diff || std::isnan(diff)) max_diff = std::isnan(diff) ? INFINITY : diff, worst = i;
    if (!(diff <= tol.abs + tol.rel * std::abs(w))) {
      if (n_off < kShown) first << "\n  " << where(i) << ": got " << g << ", want " << w << " (diff " << diff << ")";
      ++n_off;
    }
  }
  if (n_off == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << n_off << " of " << std::size(got) << " values differ by more than " << tol.abs
                                       << " + " << tol.rel << " * |want|; max diff " << max_diff << " at "
                                       << where(worst) << " (got " << static_cast<double>(got[worst]) << ", want "
                                       << static_cast<double>(want[worst]) << "); first ones:" << first.str();
}

// How the reference rounds keys or values to model each KV cache format (the model room cannot name the formats).
inline model::KvRounding kv_rounding(KvFormat format) {
  switch (format) {
    case KvFormat::F32: return model::KvRounding::F32;
    case KvFormat::F16: return model::KvRounding::F16;
    case KvFormat::BF16: return model::KvRounding::BF16;
    case KvFormat::Q8_0: return model::KvRounding::Q8_0;
    case KvFormat::Q4_0: return model::KvRounding::Q4_0;
  }
  throw std::invalid_argument("no reference rounding for this KV cache format");
}

inline model::KvRoundings kv_roundings(KvFormats formats) { return {kv_rounding(formats.k), kv_rounding(formats.v)}; }

// The KV cache formats the forward-pass grids run, and the reference's options that model each.
inline const std::vector<KvFormat> kKvFormats = {KvFormat::F32, KvFormat::F16};

inline model::ReferenceOptions reference_options(KvFormat format) {
  model::ReferenceOptions o;
  o.kv_rounding = kv_rounding(format);
  return o;
}

// Empty when this build has backend `name` and it can run here; else why not.
inline std::string backend_unavailable(const std::string& name) {
  const BackendEntry* entry = BackendRegistry::instance().find(name);
  if (!entry) return "this build has no backend '" + name + "'";
  return entry->unavailable_reason();
}

// One cell of a grid.
template <class Shape>
struct Cell {
  const Shape& shape;
  KvFormat kv_format;
  const std::string& backend;

  std::string label() const {
    return shape.name + ", " + backend + " backend, " + std::string(kv_format_name(kv_format)) + " cache";
  }
};

// Calls check(cell) for every shape x KV format x backend (in that nesting, so a check can reuse the reference of
// one shape and format across backends), each under a trace naming the cell. Backends that cannot run here are
// skipped with a note. Returns how many cells ran: a caller whose grid ran none has checked nothing.
template <class Shape, class Check>
int for_each_cell(const std::vector<Shape>& shapes, const std::vector<KvFormat>& kv_formats,
                  const std::vector<std::string>& backends, Check check) {
  std::vector<std::string> runnable;
  for (const std::string& b : backends) {
    const std::string reason = backend_unavailable(b);
    if (reason.empty()) {
      runnable.push_back(b);
    } else {
      std::printf("[ skipped  ] backend %s: %s\n", b.c_str(), reason.c_str());
    }
  }
  int n_cells = 0;
  for (const Shape& shape : shapes) {
    for (const KvFormat kv_format : kv_formats) {
      for (const std::string& backend : runnable) {
        const Cell<Shape> cell{shape, kv_format, backend};
        SCOPED_TRACE(cell.label());
        check(cell);
        ++n_cells;
      }
    }
  }
  return n_cells;
}

// ---- the whole forward pass as one op ----------------------------------------------------------------------

// A GGUF file and the model viewing it, kept together at one address (the model points into the file).
struct LoadedModel {
  explicit LoadedModel(const std::filesystem::path& path)
      : file(gguf::File::open(path.string())), model(model::LlamaModel::load(file)) {}
  LoadedModel(const LoadedModel&) = delete;
  LoadedModel& operator=(const LoadedModel&) = delete;

  gguf::File file;
  model::LlamaModel model;
};

// How a sequence's tokens reach the backend.
enum class Feed {
  OneStep,      // the whole sequence as one prompt step, its KV blocks in order
  TokenByToken  // one decode step per token, its KV blocks scattered through the cache in reverse order
};

// One model and token sequence, with what the backends must match the reference to.
struct ForwardShape {
  std::string name;  // for messages, e.g. the fixture's name
  const model::LlamaModel* model = nullptr;
  std::vector<int32_t> tokens;
  int32_t window = 0;  // sliding-window attention, as StepPlan::Run
  int32_t n_sink = 0;
  Tolerance f32_cache;  // the backend's logits against the reference's without rounding
  Tolerance f16_cache;  // ... and with an f16 cache, against the reference's f16 rounding

  Tolerance tolerance(KvFormat format) const { return format == KvFormat::F16 ? f16_cache : f32_cache; }
};

// Logits of every token of shape.tokens, [n_tokens][n_vocab], from backend `backend` made by the registry as the
// engine makes it (2 CPU threads; hybrid puts half the layers on the GPU).
inline std::vector<float> backend_logits(const ForwardShape& shape, const std::string& backend, KvFormat kv_format,
                                         Feed feed) {
  constexpr int32_t kBlock = 16;
  const model::LlamaModel& model = *shape.model;
  const int32_t n_tokens = static_cast<int32_t>(shape.tokens.size());
  const int32_t n_blocks = (n_tokens + kBlock - 1) / kBlock;
  BackendOptions options;
  options.n_threads = 2;
  options.n_kv_slots = 2 * n_blocks * kBlock;
  options.kv_block_size = kBlock;
  options.kv_format = kv_format;
  options.gpu_layers = model.config.n_layer / 2;
  const BackendEntry* entry = BackendRegistry::instance().find(backend);
  if (!entry) throw std::invalid_argument("this build has no backend '" + backend + "'");
  const std::unique_ptr<Backend> b = entry->create(model, options);

  std::vector<int32_t> blocks(n_blocks);
  for (int32_t i = 0; i < n_blocks; ++i) blocks[i] = feed == Feed::OneStep ? i : 2 * (n_blocks - i) - 1;
  StepPlanBuilder builder(model.config.n_vocab, kBlock, options.n_kv_slots);
  const size_t n_vocab = model.config.n_vocab;
  std::vector<float> logits(shape.tokens.size() * n_vocab);
  const std::span<const int32_t> tokens(shape.tokens);
  if (feed == Feed::OneStep) {
    builder.add_run(tokens, 0, blocks, LogitsWanted::All, shape.window, shape.n_sink);
    b->forward({}, builder.plan(), logits.data());
  } else {
    for (int32_t p = 0; p < n_tokens; ++p) {
      builder.clear();
      builder.add_run(tokens.subspan(p, 1), p, blocks, LogitsWanted::Last, shape.window, shape.n_sink);
      b->forward({}, builder.plan(), logits.data() + p * n_vocab);
    }
  }
  return logits;
}

// Every shape x KV format x backend x feed: the backend's logits against model::reference_logits with the cache
// format's rounding (computed once per shape and format). Returns how many cells ran.
inline int check_forward_grid(const std::vector<ForwardShape>& shapes, const std::vector<std::string>& backends,
                              const std::vector<KvFormat>& kv_formats = kKvFormats) {
  const ForwardShape* reference_shape = nullptr;
  KvFormat reference_format{};
  std::vector<double> want;
  return for_each_cell(shapes, kv_formats, backends, [&](const Cell<ForwardShape>& cell) {
    const ForwardShape& s = cell.shape;
    if (reference_shape != &s || reference_format != cell.kv_format) {
      model::ReferenceOptions options = reference_options(cell.kv_format);
      options.window = s.window;
      options.n_sink = s.n_sink;
      want = model::reference_logits(*s.model, s.tokens, options);
      reference_shape = &s;
      reference_format = cell.kv_format;
    }
    for (const Feed feed : {Feed::OneStep, Feed::TokenByToken}) {
      EXPECT_TRUE(all_close(backend_logits(s, cell.backend, cell.kv_format, feed), want, s.tolerance(cell.kv_format),
                            s.model->config.n_vocab))
          << (feed == Feed::OneStep ? "in one step" : "token by token");
    }
  });
}

}  // namespace tessera::test
