// `tessera bench`: prompt-processing and generation speed, the way llama-bench measures them, with the memory
// bandwidth measured in the same run so token generation can be read as a fraction of its roofline.
//   ppP: one prompt of P random tokens in one batch, a fresh sequence each repetition.
//   tgN: N tokens decoded one at a time from an empty sequence, a fresh sequence each repetition.
// With -d D, both start from a sequence that already holds D random tokens (evaluated untimed), as llama-bench's
// depth: "tg128 @ d4096" is decode speed at a 4096-token context, where attention reads a long KV cache.
// With --parallel, one test per sequence count instead (bench_parallel.h), reported as llama-batched-bench does.
// Each test runs once untimed first (it also pages the weights in), then `-r` timed repetitions. With --membw, the
// bandwidth is also probed (briefly) before and after each generation repetition: on a shared host it swings
// within seconds, so each repetition is judged against the better of the two probes beside it. Those probes read
// the weights that generation streams where the backend keeps them in host memory.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cli/bench_parallel.h"
#include "cli/commands.h"
#include "cli/stdout_writer.h"
#include "cli/engine_options.h"
#include "cli/membw.h"
#include "engine/engine.h"
#include "engine/sampler.h"
#include "gguf/gguf.h"
#include "quant/interleaved.h"
#include "quant/quant.h"
#include "quant/quantize_model.h"
#include "util/cpu_info.h"

namespace tessera::cli {
namespace {

struct BenchArgs {
  EngineCliOptions engine;  // the context and batch sizes come from -p and -n
  int n_prompt = 512;
  int n_gen = 128;
  int n_depth = 0;
  int repetitions = 5;
  std::string output = "md";
  bool membw = false;
  int membw_mib = 512;
  std::vector<int> parallel;  // sequence counts; empty: the pp and tg tests
  bool shared_prompt = false;
  int batch_size = 2048;      // with --parallel: most tokens in one prompt step
};

struct TestResult {
  std::string name;  // "pp512", "tg128"
  int n_prompt = 0;
  int n_gen = 0;
  std::vector<double> samples;  // tokens per second of each timed repetition
  double mean = 0;
  double stddev = 0;
  // tg with --membw: read GB/s probed before the first repetition and after each one (samples.size() + 1).
  std::vector<double> adjacent_gb_s;
  size_t adjacent_probe_bytes = 0;
  bool adjacent_probe_reads_weights = false;
};

// The probes between repetitions read the streamed weights themselves: the same bytes on the same pages, and no
// memory beyond the model's. A probe must read several times the last-level cache or it measures the cache too;
// from 256 MiB up the rate no longer depends on the size (docs/notes/2026-11-27-cpu-kv-cache-and-prefetch.md).
// Where the weights are smaller or not in host memory, a buffer of that minimum size is read instead.
constexpr size_t kAdjacentProbeMinBytes = size_t{256} << 20;
constexpr int kAdjacentProbeRepetitions = 3;

struct ModelSummary {
  std::string path;
  std::string type;       // general.file_type's name ("Q4_K_M"), else the type holding most weight bytes
  uint64_t n_params = 0;  // elements of all tensors
  uint64_t weight_bytes = 0;
  std::string device;     // what the backend computes on
  KvFormats cache_type;
  uint64_t kv_cache_bytes = 0;
};

void summarise(TestResult& r) {
  double sum = 0;
  for (double s : r.samples) sum += s;
  r.mean = sum / static_cast<double>(r.samples.size());
  double sq = 0;
  for (double s : r.samples) sq += (s - r.mean) * (s - r.mean);
  r.stddev = r.samples.size() > 1 ? std::sqrt(sq / static_cast<double>(r.samples.size() - 1)) : 0.0;
}

ModelSummary summarise_model(const std::string& path, const gguf::File& file, const engine::Engine& engine) {
  ModelSummary m;
  m.path = path;
  m.weight_bytes = engine.model().weight_bytes();
  m.device = engine.backend().device();
  m.kv_cache_bytes = engine.kv_cache_bytes();
  std::map<GgmlType, uint64_t> bytes_by_type;
  for (const gguf::TensorInfo& t : file.tensors()) {
    m.n_params += t.n_elements;
    bytes_by_type[t.type] += t.n_bytes;
  }
  GgmlType dominant = GgmlType::F32;
  uint64_t most = 0;
  for (const auto& [type, bytes] : bytes_by_type) {
    if (bytes > most) {
      most = bytes;
      dominant = type;
    }
  }
  m.type = std::string(ggml_type_name(dominant));
  if (const std::optional<int64_t> ftype = file.get_int("general.file_type"); ftype && *ftype >= 0) {
    const std::string_view name = quant::model_quant_type_name(static_cast<quant::ModelQuantType>(*ftype));
    if (name != "unknown") m.type = std::string(name);
  }
  return m;
}

// A fresh sequence holding `depth` random tokens.
int32_t sequence_at_depth(engine::Engine& engine, std::mt19937& rng, int depth) {
  const int32_t seq = engine.new_sequence();
  if (depth > 0) engine.eval(seq, random_tokens(rng, depth, engine.n_vocab()));
  return seq;
}

// One prompt of n tokens in one forward call on a fresh sequence; returns tokens per second.
double run_prompt(engine::Engine& engine, std::mt19937& rng, int n, int depth) {
  const std::vector<int32_t> tokens = random_tokens(rng, n, engine.n_vocab());
  const int32_t seq = sequence_at_depth(engine, rng, depth);
  const auto start = std::chrono::steady_clock::now();
  const std::span<const float> logits = engine.eval(seq, tokens);
  const double s = seconds_since(start);
  engine::require_finite_logits(logits);
  engine.free_sequence(seq);
  return n / s;
}

// n tokens one at a time on a fresh sequence; returns tokens per second.
double run_generation(engine::Engine& engine, std::mt19937& rng, int n, int depth) {
  const std::vector<int32_t> tokens = random_tokens(rng, n, engine.n_vocab());
  const int32_t seq = sequence_at_depth(engine, rng, depth);
  const auto start = std::chrono::steady_clock::now();
  std::span<const float> logits;
  for (int32_t token : tokens) logits = engine.eval(seq, std::span<const int32_t>(&token, 1));
  const double s = seconds_since(start);
  engine::require_finite_logits(logits);
  engine.free_sequence(seq);
  return n / s;
}

std::string human_bytes(uint64_t bytes) {
  const double mib = static_cast<double>(bytes) / (1024.0 * 1024.0);
  return mib >= 1024 ? fmt::format("{:.2f} GiB", mib / 1024) : fmt::format("{:.2f} MiB", mib);
}

std::string human_params(uint64_t n) {
  if (n >= 1000000000) return fmt::format("{:.2f} B", static_cast<double>(n) / 1e9);
  return fmt::format("{:.2f} M", static_cast<double>(n) / 1e6);
}

// Weight bytes streamed per second by token generation (each token reads every weight once).
double weights_gb_per_s(const ModelSummary& model, const TestResult& r) {
  return static_cast<double>(model.weight_bytes) * r.mean / 1e9;
}

// Mean over the repetitions of each one's weight bandwidth over the better probe beside it; 0 without probes.
double adjacent_fraction(const ModelSummary& model, const TestResult& r) {
  if (r.adjacent_gb_s.size() != r.samples.size() + 1) return 0;
  double sum = 0;
  for (size_t i = 0; i < r.samples.size(); ++i) {
    const double probe = std::max(r.adjacent_gb_s[i], r.adjacent_gb_s[i + 1]);
    sum += static_cast<double>(model.weight_bytes) * r.samples[i] / 1e9 / probe;
  }
  return sum / static_cast<double>(r.samples.size());
}

void print_membw_line(const MemoryBandwidth& bw) {
  print_stdout("memory read bandwidth ({} thread{}, {} loads, {} x {}): best {:.1f} GB/s, median {:.1f} GB/s\n",
             bw.threads, bw.threads == 1 ? "" : "s", bw.method, human_bytes(bw.buffer_bytes), bw.repetitions,
             bw.best_gb_s, bw.median_gb_s);
}

void print_markdown(const std::optional<ModelSummary>& model, const std::vector<TestResult>& results,
                    const BenchArgs& args, int threads, const std::optional<MemoryBandwidth>& bw) {
  if (model) {
    const std::string label = fmt::format("llama {} {}", human_params(model->n_params), model->type);
    std::string kernels;
    if (args.engine.backend != "cuda") {
      kernels = fmt::format("; CPU kernels: {}, weight prefetch {}", quant::simd_level_name(quant::active_simd_level()),
                            quant::weight_prefetch_name(quant::active_weight_prefetch()));
    }
    print_stdout("device: {}{}\nKV cache: {}, {}\n\n", model->device, kernels, kv_formats_name(model->cache_type),
                 human_bytes(model->kv_cache_bytes));
    print_stdout("| model | size | params | backend | threads | test | t/s | weights GB/s | of membw "
               "| of adjacent membw |\n");
    print_stdout("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (const TestResult& r : results) {
      std::string gbs, fraction, adjacent;
      if (r.n_gen > 0) {
        gbs = fmt::format("{:.1f}", weights_gb_per_s(*model, r));
        if (bw) fraction = fmt::format("{:.0f}%", 100 * weights_gb_per_s(*model, r) / bw->best_gb_s);
        if (!r.adjacent_gb_s.empty()) adjacent = fmt::format("{:.0f}%", 100 * adjacent_fraction(*model, r));
      }
      print_stdout("| {} | {} | {} | {} | {} | {} | {:.2f} ± {:.2f} | {} | {} | {} |\n", label,
                 human_bytes(model->weight_bytes), human_params(model->n_params), args.engine.backend, threads, r.name,
                 r.mean, r.stddev, gbs, fraction, adjacent);
    }
  }
  if (bw) print_membw_line(*bw);
  for (const TestResult& r : results) {
    if (r.adjacent_gb_s.empty()) continue;
    const char* source = r.adjacent_probe_reads_weights ? "the loaded weights," : "a buffer of";
    print_stdout("{} adjacent probes ({} {} x {}, before and after each repetition): {:.1f} GB/s\n", r.name, source,
               human_bytes(r.adjacent_probe_bytes), kAdjacentProbeRepetitions, fmt::join(r.adjacent_gb_s, ", "));
  }
}

void print_json(const std::optional<ModelSummary>& model, const std::vector<TestResult>& results,
                const BenchArgs& args, int threads, const std::optional<MemoryBandwidth>& bw) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  auto add_membw = [&](nlohmann::ordered_json& o) {
    o["membw_gb_s"] = bw->best_gb_s;
    o["membw_median_gb_s"] = bw->median_gb_s;
    o["membw_method"] = bw->method;
  };
  for (const TestResult& r : results) {
    nlohmann::ordered_json o;
    o["test"] = r.name;
    o["n_prompt"] = r.n_prompt;
    o["n_gen"] = r.n_gen;
    o["tokens_per_s"] = r.mean;
    o["stddev"] = r.stddev;
    o["samples_ts"] = r.samples;
    o["backend"] = args.engine.backend;
    o["device"] = model->device;
    o["threads"] = threads;
    o["simd"] = quant::simd_level_name(quant::active_simd_level());
    o["weight_prefetch"] = quant::weight_prefetch_name(quant::active_weight_prefetch());
    o["model_file"] = model->path;
    o["model_type"] = model->type;
    o["model_params"] = model->n_params;
    o["model_bytes"] = model->weight_bytes;
    o["n_depth"] = args.n_depth;
    o["cache_type_k"] = kv_format_name(model->cache_type.k);
    o["cache_type_v"] = kv_format_name(model->cache_type.v);
    o["kv_cache_bytes"] = model->kv_cache_bytes;
    if (r.n_gen > 0) o["weights_gb_s"] = weights_gb_per_s(*model, r);
    if (bw) {
      add_membw(o);
      if (r.n_gen > 0) o["membw_fraction"] = weights_gb_per_s(*model, r) / bw->best_gb_s;
    }
    if (!r.adjacent_gb_s.empty()) {
      o["membw_adjacent_gb_s"] = r.adjacent_gb_s;
      o["membw_adjacent_source"] = r.adjacent_probe_reads_weights ? "weights" : "buffer";
      o["membw_adjacent_bytes"] = r.adjacent_probe_bytes;
      o["membw_adjacent_fraction"] = adjacent_fraction(*model, r);
    }
    out.push_back(std::move(o));
  }
  if (!model && bw) {
    nlohmann::ordered_json o;
    o["test"] = "membw";
    o["threads"] = threads;
    o["buffer_bytes"] = bw->buffer_bytes;
    o["repetitions"] = bw->repetitions;
    add_membw(o);
    out.push_back(std::move(o));
  }
  print_stdout("{}\n", out.dump(2));
}

struct ParallelResult {
  ParallelTest test;
  std::vector<ParallelSample> samples;
  double pp_seconds = 0;  // means over the samples
  double tg_seconds = 0;
  std::vector<double> total_samples;  // tokens per second of each sample, prompt and generation together
  double total_stddev = 0;

  double pp_tokens_per_s() const { return pp_seconds > 0 ? parallel_pp_tokens(test) / pp_seconds : 0; }
  double tg_tokens_per_s() const { return tg_seconds > 0 ? parallel_tg_tokens(test) / tg_seconds : 0; }
  double total_tokens_per_s() const { return parallel_kv_tokens(test) / (pp_seconds + tg_seconds); }
};

void summarise(ParallelResult& r) {
  TestResult totals;
  for (const ParallelSample& s : r.samples) {
    r.pp_seconds += s.pp_seconds / static_cast<double>(r.samples.size());
    r.tg_seconds += s.tg_seconds / static_cast<double>(r.samples.size());
    totals.samples.push_back(parallel_kv_tokens(r.test) / (s.pp_seconds + s.tg_seconds));
  }
  summarise(totals);
  r.total_samples = totals.samples;
  r.total_stddev = totals.stddev;
}

std::string parallel_test_name(const ParallelTest& t) { return fmt::format("pp{}+tg{}", t.n_prompt, t.n_gen); }

void print_parallel_markdown(const ModelSummary& model, const std::vector<ParallelResult>& results,
                             const BenchArgs& args, int threads) {
  print_stdout("device: {}\n", model.device);
  print_stdout("model: llama {} {}, {}; backend {}, {} thread{}; batch {}{}\n\n", human_params(model.n_params), model.type,
             human_bytes(model.weight_bytes), args.engine.backend, threads, threads == 1 ? "" : "s", args.batch_size,
             args.shared_prompt ? "; prompt shared" : "");
  print_stdout("| PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |\n");
  print_stdout("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const ParallelResult& r : results) {
    print_stdout("| {} | {} | {} | {} | {:.3f} | {:.2f} | {:.3f} | {:.2f} | {:.3f} | {:.2f} |\n", r.test.n_prompt,
               r.test.n_gen, r.test.n_sequences, parallel_kv_tokens(r.test), r.pp_seconds, r.pp_tokens_per_s(),
               r.tg_seconds, r.tg_tokens_per_s(), r.pp_seconds + r.tg_seconds, r.total_tokens_per_s());
  }
}

void print_parallel_json(const ModelSummary& model, const std::vector<ParallelResult>& results, const BenchArgs& args,
                         int threads) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const ParallelResult& r : results) {
    nlohmann::ordered_json o;
    o["test"] = parallel_test_name(r.test);
    o["n_prompt"] = r.test.n_prompt;
    o["n_gen"] = r.test.n_gen;
    o["parallel"] = r.test.n_sequences;
    o["shared_prompt"] = r.test.shared_prompt;
    o["n_batch"] = args.batch_size;
    o["n_kv"] = parallel_kv_tokens(r.test);
    o["pp_tokens"] = parallel_pp_tokens(r.test);
    o["tg_tokens"] = parallel_tg_tokens(r.test);
    o["pp_seconds"] = r.pp_seconds;
    o["tg_seconds"] = r.tg_seconds;
    o["pp_tokens_per_s"] = r.pp_tokens_per_s();
    o["tg_tokens_per_s"] = r.tg_tokens_per_s();
    o["total_tokens_per_s"] = r.total_tokens_per_s();
    o["tokens_per_s"] = r.total_tokens_per_s();
    o["stddev"] = r.total_stddev;
    o["samples_ts"] = r.total_samples;
    o["backend"] = args.engine.backend;
    o["device"] = model.device;
    o["threads"] = threads;
    o["simd"] = quant::simd_level_name(quant::active_simd_level());
    o["weight_prefetch"] = quant::weight_prefetch_name(quant::active_weight_prefetch());
    o["model_file"] = model.path;
    o["model_type"] = model.type;
    o["model_params"] = model.n_params;
    o["model_bytes"] = model.weight_bytes;
    out.push_back(std::move(o));
  }
  print_stdout("{}\n", out.dump(2));
}

void validate(const BenchArgs& a, bool has_model) {
  if (!has_model && !a.membw) throw UsageError("bench needs a model (-m FILE) or --membw");
  if (a.n_prompt < 0) throw UsageError(fmt::format("-p must not be negative (got {})", a.n_prompt));
  if (a.n_gen < 0) throw UsageError(fmt::format("-n must not be negative (got {})", a.n_gen));
  if (a.n_depth < 0) throw UsageError(fmt::format("-d must not be negative (got {})", a.n_depth));
  if (has_model && a.n_prompt == 0 && a.n_gen == 0) throw UsageError("-p and -n are both 0: nothing to measure");
  if (a.repetitions < 1) throw UsageError(fmt::format("-r must be at least 1 (got {})", a.repetitions));
  if (a.membw_mib < 64) throw UsageError(fmt::format("--membw-mib must be at least 64 (got {})", a.membw_mib));
  if (a.parallel.empty()) {
    if (a.shared_prompt) throw UsageError("--shared-prompt needs --parallel");
    return;
  }
  if (!has_model) throw UsageError("--parallel needs a model (-m FILE)");
  if (a.membw) throw UsageError("--membw does not combine with --parallel");
  if (a.n_depth > 0) throw UsageError("-d does not combine with --parallel");
  for (int n : a.parallel) {
    if (n < 1) throw UsageError(fmt::format("--parallel takes sequence counts of at least 1 (got {})", n));
  }
  if (a.batch_size < 1) throw UsageError(fmt::format("-b must be at least 1 (got {})", a.batch_size));
}

// One engine for every sequence count, its cache sized for the largest.
void run_parallel_bench(const BenchArgs& args, engine::EngineOptions options) {
  const std::string& path = args.engine.model;
  if (!std::filesystem::exists(path)) throw std::runtime_error("model file '" + path + "' not found");
  const gguf::File file = gguf::File::open(path);
  std::vector<ParallelTest> tests;
  int64_t kv_slots = 0;
  for (int n : args.parallel) {
    tests.push_back({n, args.n_prompt, args.n_gen, args.shared_prompt});
    kv_slots = std::max(kv_slots, parallel_kv_slots_needed(tests.back(), engine::kKvBlockSize));
  }
  if (kv_slots > std::numeric_limits<int>::max()) throw UsageError("--parallel: the KV cache would be too large");
  options.n_ctx = std::max(args.n_prompt + args.n_gen, 1);
  options.n_kv_tokens = static_cast<int>(kv_slots);
  options.n_batch = args.batch_size;
  options.prefix_caching = false;  // every repetition evaluates its prompts; --shared-prompt forks explicitly
  engine::Engine engine(file, options);
  const ModelSummary model = summarise_model(path, file, engine);

  std::mt19937 rng(1234);
  // Untimed: pages the weights in.
  run_parallel(engine, rng, {1, args.n_prompt, std::min(args.n_gen, 16), false});
  // Repetition i of every count before repetition i + 1 of any: a shared host's slow minutes then fall on all the
  // counts alike, and their ratios hold better than their rates.
  std::vector<ParallelResult> results;
  for (const ParallelTest& test : tests) results.push_back({test, {}, 0, 0, {}, 0});
  for (int i = 0; i < args.repetitions; ++i) {
    for (ParallelResult& r : results) {
      const ParallelSample& s = r.samples.emplace_back(run_parallel(engine, rng, r.test));
      fmt::print(stderr, "bench: {} x{} run {}/{}: pp {:.2f} t/s, tg {:.2f} t/s\n", parallel_test_name(r.test),
                 r.test.n_sequences, i + 1, args.repetitions,
                 s.pp_seconds > 0 ? parallel_pp_tokens(r.test) / s.pp_seconds : 0,
                 s.tg_seconds > 0 ? parallel_tg_tokens(r.test) / s.tg_seconds : 0);
    }
  }
  for (ParallelResult& r : results) summarise(r);
  if (args.output == "json") {
    print_parallel_json(model, results, args, options.n_threads);
  } else {
    print_parallel_markdown(model, results, args, options.n_threads);
  }
}

void run_bench(const BenchArgs& args) {
  const bool has_model = !args.engine.model.empty();
  validate(args, has_model);
  engine::EngineOptions options = args.engine.to_engine_options();
  const int threads = options.n_threads > 0 ? options.n_threads : util::physical_core_count();
  if (!args.parallel.empty()) {
    options.n_threads = threads;
    run_parallel_bench(args, options);
    return;
  }

  // The probe runs before the model is loaded, so its buffer never adds to the model's resident memory.
  std::optional<MemoryBandwidth> bw;
  if (args.membw) bw = measure_read_bandwidth(threads, static_cast<size_t>(args.membw_mib) << 20);

  std::optional<ModelSummary> model;
  std::vector<TestResult> results;
  if (has_model) {
    const std::string& path = args.engine.model;
    if (!std::filesystem::exists(path)) throw std::runtime_error("model file '" + path + "' not found");
    const gguf::File file = gguf::File::open(path);
    options.n_threads = threads;
    options.n_ctx = std::max({args.n_prompt, args.n_gen, 1}) + args.n_depth;
    options.n_batch = args.n_depth > 0 ? std::max(args.n_prompt, 512) : std::max(args.n_prompt, 1);
    options.prefix_caching = false;  // every repetition evaluates its tokens
    engine::Engine engine(file, options);
    model = summarise_model(path, file, engine);
    model->cache_type = options.kv_format;
    const std::string depth = args.n_depth > 0 ? fmt::format(" @ d{}", args.n_depth) : "";

    std::mt19937 rng(1234);
    if (args.n_prompt > 0) {
      TestResult r{fmt::format("pp{}{}", args.n_prompt, depth), args.n_prompt, 0, {}, 0, 0, {}};
      run_prompt(engine, rng, args.n_prompt, args.n_depth);
      for (int i = 0; i < args.repetitions; ++i) {
        r.samples.push_back(run_prompt(engine, rng, args.n_prompt, args.n_depth));
        fmt::print(stderr, "bench: {} run {}/{}: {:.2f} t/s\n", r.name, i + 1, args.repetitions, r.samples.back());
      }
      summarise(r);
      results.push_back(std::move(r));
    }
    if (args.n_gen > 0) {
      TestResult r{fmt::format("tg{}{}", args.n_gen, depth), 0, args.n_gen, {}, 0, 0, {}};
      run_generation(engine, rng, std::min(args.n_gen, 16), args.n_depth);
      const auto* stream = dynamic_cast<const HostWeightStream*>(&engine.backend());
      const std::span<const uint8_t> weights = stream ? stream->streamed_host_weights() : std::span<const uint8_t>{};
      r.adjacent_probe_reads_weights = weights.size() >= kAdjacentProbeMinBytes;
      auto probe = [&] {
        if (!args.membw) return;
        const MemoryBandwidth m =
            r.adjacent_probe_reads_weights
                ? measure_read_bandwidth(threads, weights, kAdjacentProbeRepetitions)
                : measure_read_bandwidth(threads, kAdjacentProbeMinBytes, kAdjacentProbeRepetitions);
        r.adjacent_gb_s.push_back(m.best_gb_s);
        r.adjacent_probe_bytes = m.buffer_bytes;
      };
      probe();
      for (int i = 0; i < args.repetitions; ++i) {
        r.samples.push_back(run_generation(engine, rng, args.n_gen, args.n_depth));
        probe();
        fmt::print(stderr, "bench: {} run {}/{}: {:.2f} t/s\n", r.name, i + 1, args.repetitions, r.samples.back());
      }
      summarise(r);
      results.push_back(std::move(r));
    }
  }

  if (args.output == "json") {
    print_json(model, results, args, threads, bw);
  } else {
    print_markdown(model, results, args, threads, bw);
  }
}

}  // namespace

void add_bench_command(CLI::App& root) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = root.add_subcommand(
      "bench", "Measure prompt processing (ppP) and generation (tgN) speed, like llama-bench");
  args->engine.add_to(cmd, {.model_required = false, .context_and_batch = false});
  cmd->add_option("-p,--n-prompt", args->n_prompt, "prompt tokens processed in one batch (0: skip)")->capture_default_str();
  cmd->add_option("-n,--n-gen", args->n_gen, "tokens generated one at a time (0: skip)")->capture_default_str();
  cmd->add_option("-d,--n-depth", args->n_depth, "tokens already in the context when each test starts")
      ->capture_default_str();
  cmd->add_option("-r,--repetitions", args->repetitions, "timed repetitions of each test")->capture_default_str();
  cmd->add_option("--output", args->output, "md or json")
      ->check(CLI::IsMember({"md", "json"}))
      ->capture_default_str();
  cmd->add_flag("--membw", args->membw, "also measure memory read bandwidth with the same thread count");
  cmd->add_option("--parallel", args->parallel,
                  "sequence counts N (comma-separated): N prompts of -p tokens, then -n tokens per sequence, one "
                  "token of each sequence per step, like llama-batched-bench")
      ->delimiter(',');
  cmd->add_flag("--shared-prompt", args->shared_prompt,
                "with --parallel: one prompt, its KV blocks shared by all N sequences");
  cmd->add_option("-b,--batch-size", args->batch_size, "with --parallel: most prompt tokens in one forward call")
      ->capture_default_str();
  cmd->add_option("--membw-mib", args->membw_mib, "bandwidth probe buffer in MiB (keep it far above the L3 cache)")
      ->capture_default_str();
  cmd->callback([args] { run_bench(*args); });
}

}  // namespace tessera::cli
