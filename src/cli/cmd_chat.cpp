// tessera chat: a conversation with a model in the terminal, as llama.cpp's `llama-cli -cnv` and Ollama's `run`
// hold one. Each turn renders the whole conversation with the chat template (cli/chat_prompt.h) and runs it as one
// request; the prefix cache (engine/kv_blocks.h) finds the previous turns' keys and values, so only the tokens from
// the first one that differs are evaluated. On a terminal: line editing and history (libedit), multi-line input
// between """ lines, Ctrl-C stops a reply or clears the line (twice: quit). Without a terminal every input line is
// one message (or command) and only the replies are printed, so a chat can be scripted.
#include <editline/readline.h>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli/chat_prompt.h"
#include "cli/commands.h"
#include "cli/engine_options.h"
#include "cli/sampling_options.h"
#include "cli/signals.h"
#include "cli/stdout_writer.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "io/input_file.h"
#include "io/output_file.h"

namespace tessera::cli {
namespace {

constexpr int kReplyRoom = 256;  // tokens kept free for a reply when old turns must make room and no -n is set

struct ChatOptions {
  EngineCliOptions engine;
  SamplingCliOptions sampling;
  ChatTemplateOptions chat_template;
  std::string system;
  int max_tokens = 0;
  bool verbose_prompt = false;
};

const char* const kHelp =
    "commands:\n"
    "  /help                 this list\n"
    "  /exit                 leave (also Ctrl-D)\n"
    "  /clear                start a new conversation (the system message stays)\n"
    "  /system TEXT          set the system message (empty: none)\n"
    "  /stats                tokens in the context, the last reply's speed and time to first token\n"
    "  /save FILE            write the conversation as JSON messages\n"
    "  /load FILE            read a conversation written by /save (or `tessera template --messages`)\n"
    "  /config               show the settings\n"
    "  /set NAME VALUE       change temp, top_k, top_p, min_p, max_tokens or seed\n"
    "  /template             show the chat template in use\n"
    "a line of \"\"\" starts and ends a message of several lines\n";

std::string trim(std::string_view s) {
  const size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string_view::npos ? "" : std::string(s.substr(a, b - a + 1));
}

// Where lines come from: libedit on a terminal, plain reads otherwise.
class LineReader {
 public:
  explicit LineReader(bool terminal) : terminal_(terminal) {}

  // The next line; nullopt at the end of input, or on a terminal when Ctrl-C interrupted the line.
  std::optional<std::string> read(const char* prompt) {
    const InterruptibleReads interruptible;
    if (!terminal_) {
      std::string text;
      if (!std::getline(std::cin, text)) return std::nullopt;
      return text;
    }
    char* raw = readline(prompt);
    if (!raw) return std::nullopt;
    std::string line = raw;
    std::free(raw);
    if (!trim(line).empty()) add_history(line.c_str());
    return line;
  }

 private:
  bool terminal_;
};

class ChatSession {
 public:
  ChatSession(ChatOptions& options, LoadedModel loaded, bool terminal)
      : options_(options),
        loaded_(std::move(loaded)),
        tokenizer_(load_tokenizer(*loaded_.file)),
        prompt_(make_chat_prompt(options.chat_template, *loaded_.file, tokenizer_, "")),
        scheduler_(*loaded_.engine, {1, loaded_.engine->n_batch()}),
        sampling_(options.sampling.to_params()),
        max_tokens_(options.max_tokens),
        terminal_(terminal) {
    if (!options.system.empty()) messages_.push_back({"system", options.system});
  }

  int run() {
    if (!prompt_.has_template()) {
      std::fprintf(stderr, "chat: the model has no chat template: plain text, the model continues what you type\n");
    }
    if (terminal_) {
      print_stdout("Chatting with {} ({} tokens of context). /help lists the commands; /exit or Ctrl-D leaves.\n",
                   std::filesystem::path(options_.engine.model).filename().string(), loaded_.engine->n_ctx());
      flush_stdout();
    }
    const InteractiveInterrupts interrupts;
    LineReader reader(terminal_);
    // Ctrl-C at the prompt clears the line; twice in a row leaves. One that came while no line was being read
    // counts as well; those during a reply only stopped the reply.
    int handled = InteractiveInterrupts::sigint_count(), in_a_row = 0;
    while (true) {
      std::optional<std::string> line;
      if (InteractiveInterrupts::sigint_count() == handled) line = reader.read(terminal_ ? "> " : "");
      if (const int now = InteractiveInterrupts::sigint_count(); now != handled) {
        in_a_row += now - handled;
        handled = now;
        if (!terminal_ || in_a_row >= 2) {
          say("\n");
          return 130;
        }
        say("\n(Ctrl-C again, /exit or Ctrl-D leaves)\n");
        continue;
      }
      if (!line) break;
      in_a_row = 0;
      std::string text = *line;
      if (trim(text) == "\"\"\"") {
        std::optional<std::string> block = read_block(reader);
        if (!block) break;
        text = *block;
      } else if (text.starts_with("/")) {
        if (!command(text)) break;
        continue;
      }
      if (trim(text).empty()) continue;
      messages_.push_back({"user", text});
      turn();
      handled = InteractiveInterrupts::sigint_count();
    }
    if (terminal_) say("\n");
    return 0;
  }

 private:
  void say(std::string_view text) {
    write_stdout(text);
    flush_stdout();
  }
  // Lines until the closing """, joined by newlines.
  std::optional<std::string> read_block(LineReader& reader) {
    std::string block;
    for (bool first = true;; first = false) {
      std::optional<std::string> line = reader.read(terminal_ ? "... " : "");
      if (!line) return std::nullopt;
      if (trim(*line) == "\"\"\"") return block;
      if (!first) block += "\n";
      block += *line;
    }
  }

  // The prompt for the conversation so far, after dropping the oldest turns (never the system message) until it
  // and room for a reply fit the context. Empty when even the last message alone does not fit.
  std::vector<int32_t> fitting_prompt() {
    const int n_ctx = loaded_.engine->n_ctx();
    const int room = max_tokens_ > 0 ? std::min(max_tokens_, n_ctx / 2) : std::min(kReplyRoom, n_ctx / 4);
    size_t dropped = 0;
    while (true) {
      std::vector<int32_t> tokens = prompt_.tokens(messages_, true);
      if (static_cast<int>(tokens.size()) + std::max(room, 1) <= n_ctx) {
        if (dropped > 0) {
          std::fprintf(stderr, "(the context is full: the %zu oldest message%s left it)\n", dropped,
                       dropped == 1 ? "" : "s");
        }
        return tokens;
      }
      const size_t first = !messages_.empty() && messages_.front().role == "system" ? 1 : 0;
      if (messages_.size() - first <= 1) {
        std::fprintf(stderr, "error: the message has %zu tokens with the template; the context holds %d\n",
                     tokens.size(), n_ctx);
        messages_.pop_back();
        return {};
      }
      messages_.erase(messages_.begin() + static_cast<std::ptrdiff_t>(first));
      ++dropped;
    }
  }

  void turn() {
    std::vector<int32_t> tokens;
    try {
      tokens = fitting_prompt();
    } catch (const std::runtime_error& e) {  // the template refused the conversation
      std::fprintf(stderr, "error: %s\n", e.what());
      messages_.pop_back();
      return;
    }
    if (tokens.empty()) return;
    engine::RequestOptions ro;
    ro.prompt = tokens;
    ro.max_tokens = max_tokens_;
    ro.sampling = sampling_;
    ro.sampling.seed = sampling_.seed + turns_++;
    options_.engine.apply_to(ro);
    std::optional<OutputError> write_error;
    auto request = std::make_shared<engine::Request>(
        std::move(ro), tokenizer_, [&](const engine::Request& r, std::string_view piece, auto) {
          if (write_error) return;
          try {
            write_stdout(piece);
            flush_stdout();
          } catch (const OutputError& e) {
            write_error = e;
            const_cast<engine::Request&>(r).cancel();
          }
        });
    scheduler_.add(request);
    const int interrupts = InteractiveInterrupts::sigint_count();
    while (scheduler_.step()) {
      if (InteractiveInterrupts::sigint_count() != interrupts) request->cancel();
    }
    if (write_error) throw *write_error;
    const engine::RequestTimings& t = request->timings();
    if (options_.verbose_prompt) {
      std::fprintf(stderr, "%s", fmt::format("prompt: {} tokens, {} from the cache, {} evaluated: [{}]\n",
                                             tokens.size(), t.cached_prompt_tokens,
                                             tokens.size() - t.cached_prompt_tokens, fmt::join(tokens, ", "))
                                     .c_str());
    }
    switch (request->finish_reason()) {
      case engine::FinishReason::Error: throw std::runtime_error(request->error());
      case engine::FinishReason::Cancelled: say(terminal_ ? "\n(stopped)\n" : "\n"); break;
      case engine::FinishReason::ContextFull: say("\n(the reply filled the context)\n"); break;
      default: say("\n");
    }
    messages_.push_back({"assistant", request->text()});
    last_ = Stats{static_cast<int>(tokens.size()), t.cached_prompt_tokens, t.prompt_seconds,
                  static_cast<int>(request->generated().size()), t.generation_seconds, t.first_token_seconds};
    context_tokens_ = static_cast<int>(request->tokens().size());
  }

  // Runs a /command; false to leave.
  bool command(const std::string& line) {
    const size_t space = line.find(' ');
    const std::string name = line.substr(0, space);
    const std::string arg = space == std::string::npos ? "" : trim(line.substr(space + 1));
    try {
      if (name == "/exit" || name == "/quit" || name == "/bye") return false;
      if (name == "/help") {
        say(kHelp);
      } else if (name == "/clear") {
        std::erase_if(messages_, [](const chat::Message& m) { return m.role != "system"; });
        context_tokens_ = 0;
        say("(a new conversation)\n");
      } else if (name == "/system") {
        std::erase_if(messages_, [](const chat::Message& m) { return m.role == "system"; });
        if (!arg.empty()) messages_.insert(messages_.begin(), {"system", arg});
        say(arg.empty() ? "(no system message)\n" : "(system message set)\n");
      } else if (name == "/stats") {
        say(stats());
      } else if (name == "/save") {
        save(arg);
      } else if (name == "/load") {
        load(arg);
      } else if (name == "/config") {
        say(config());
      } else if (name == "/set") {
        set(arg);
      } else if (name == "/template") {
        say(prompt_.has_template() ? prompt_.template_source() + "\n"
                                   : "(none: the model has no chat template; messages are plain text)\n");
      } else {
        say(fmt::format("unknown command '{}'; /help lists the commands\n", name));
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
    }
    return true;
  }

  std::string stats() const {
    std::string out = fmt::format("context: {} of {} tokens\n", context_tokens_, loaded_.engine->n_ctx());
    if (!last_) return out + "no reply yet\n";
    const Stats& s = *last_;
    const int evaluated = s.prompt_tokens - s.cached_tokens;
    return out + fmt::format(
                     "last reply: prompt {} tokens ({} from the cache, {} evaluated at {:.1f} t/s), {} tokens "
                     "generated at {:.1f} t/s, first token after {:.0f} ms\n",
                     s.prompt_tokens, s.cached_tokens, evaluated, evaluated / std::max(s.prompt_seconds, 1e-9),
                     s.generated, (s.generated > 1 ? s.generated - 1 : 0) / std::max(s.generation_seconds, 1e-9),
                     s.first_token_seconds * 1000);
  }

  std::string config() const {
    return fmt::format(
        "model: {}\nbackend: {}\ncontext: {} tokens\nchat template: {}\ntemp: {}\ntop_k: {}\ntop_p: {}\nmin_p: {}\n"
        "max_tokens: {}\nseed: {}\n",
        options_.engine.model, loaded_.engine->backend().name(), loaded_.engine->n_ctx(),
        !options_.chat_template.name.empty()   ? options_.chat_template.name
        : !options_.chat_template.file.empty() ? options_.chat_template.file
        : prompt_.has_template()               ? "the model's"
                                               : "none (plain text)",
        sampling_.temperature, sampling_.top_k, sampling_.top_p, sampling_.min_p,
        max_tokens_ > 0 ? std::to_string(max_tokens_) : "until the end of the turn", sampling_.seed);
  }

  void set(const std::string& arg) {
    const size_t space = arg.find(' ');
    const std::string name = arg.substr(0, space), value = space == std::string::npos ? "" : trim(arg.substr(space + 1));
    if (value.empty()) throw std::invalid_argument("/set needs a name and a value, e.g. /set temp 0.7");
    // The whole value as a number, else a clear error.
    auto number = [&](auto parse) {
      size_t used = 0;
      try {
        const auto v = parse(value, &used);
        if (used == value.size()) return v;
      } catch (const std::logic_error&) {
      }
      throw std::invalid_argument(fmt::format("'{}' is not a value for {}", value, name));
    };
    const auto real = [](const std::string& s, size_t* used) { return std::stof(s, used); };
    const auto whole = [](const std::string& s, size_t* used) { return std::stoi(s, used); };
    engine::SamplerParams p = sampling_;
    int max_tokens = max_tokens_;
    if (name == "temp") {
      p.temperature = number(real);
    } else if (name == "top_k") {
      p.top_k = number(whole);
    } else if (name == "top_p") {
      p.top_p = number(real);
    } else if (name == "min_p") {
      p.min_p = number(real);
    } else if (name == "max_tokens") {
      max_tokens = number(whole);
      if (max_tokens < 0) throw std::invalid_argument("max_tokens must be 0 (until the end of the turn) or more");
    } else if (name == "seed") {
      p.seed = parse_seed(value);
    } else {
      throw std::invalid_argument(fmt::format("unknown setting '{}' (temp, top_k, top_p, min_p, max_tokens, seed)", name));
    }
    p.validate();
    sampling_ = p;
    max_tokens_ = max_tokens;
    say(fmt::format("({} = {})\n", name, value));
  }

  void save(const std::string& path) {
    if (path.empty()) throw std::invalid_argument("/save needs a file name");
    nlohmann::json conversation = nlohmann::json::array();
    for (const chat::Message& m : messages_) conversation.push_back({{"role", m.role}, {"content", m.content}});
    io::OutputFile out(path);
    const std::string text = conversation.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    out.write(text.data(), text.size());
    out.commit();
    say(fmt::format("(saved {} messages to {})\n", messages_.size(), path));
  }

  void load(const std::string& path) {
    if (path.empty()) throw std::invalid_argument("/load needs a file name");
    const nlohmann::json conversation = nlohmann::json::parse(io::read_text_input(path, "conversation file"));
    if (!conversation.is_array()) throw std::invalid_argument(path + ": not a JSON array of messages");
    std::vector<chat::Message> messages;
    for (const nlohmann::json& m : conversation) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
          !m["content"].is_string()) {
        throw std::invalid_argument(path + ": every message needs a 'role' and a 'content' string");
      }
      messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    messages_ = std::move(messages);
    say(fmt::format("(loaded {} messages from {})\n", messages_.size(), path));
  }

  struct Stats {
    int prompt_tokens = 0;
    int cached_tokens = 0;
    double prompt_seconds = 0;
    int generated = 0;
    double generation_seconds = 0;
    double first_token_seconds = 0;
  };

  ChatOptions& options_;
  LoadedModel loaded_;
  tokenizer::Tokenizer tokenizer_;
  ChatPrompt prompt_;
  engine::Scheduler scheduler_;
  engine::SamplerParams sampling_;
  int max_tokens_;
  bool terminal_;
  std::vector<chat::Message> messages_;
  uint64_t turns_ = 0;
  int context_tokens_ = 0;
  std::optional<Stats> last_;
};

int chat(ChatOptions& o) {
  if (o.max_tokens < 0) throw UsageError("--max-tokens must be 0 (until the end of the turn) or more");
  o.sampling.to_params();  // bad values are usage errors before the model loads
  const bool terminal = isatty(STDIN_FILENO) != 0;
  LoadedModel loaded = load_model(o.engine, !terminal);
  ChatSession session(o, std::move(loaded), terminal);
  return session.run();
}

}  // namespace

void add_chat_command(CLI::App& root) {
  auto o = std::make_shared<ChatOptions>();
  CLI::App* cmd = root.add_subcommand(
      "chat", "Chat with a model (the default command when no prompt is given: `tessera -m M.gguf`)");
  o->engine.add_to(cmd, {.generation = true});
  o->sampling.add_to(cmd);
  o->chat_template.add_to(cmd);
  cmd->add_option("--system", o->system, "The system message");
  cmd->add_option("-n,--max-tokens", o->max_tokens, "Most tokens in a reply (0: until the end of the turn)")
      ->capture_default_str();
  cmd->add_flag("--verbose-prompt", o->verbose_prompt,
                "After each reply, print its prompt's token ids and how many came from the cache (stderr)");
  cmd->callback([o] {
    if (const int rc = chat(*o); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace tessera::cli
