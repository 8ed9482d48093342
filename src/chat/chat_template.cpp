#include "chat/chat_template.h"

#include <ctime>

#include "chat/jinja_interpreter.h"
#include "chat/jinja_parser.h"
#include "gguf/gguf.h"

namespace tessera::chat {

struct ChatTemplate::Parsed {
  std::string source;
  jinja::Body body;
};

ChatTemplate::ChatTemplate(std::shared_ptr<const Parsed> parsed) : parsed_(std::move(parsed)) {}

ChatTemplate ChatTemplate::parse(std::string source) {
  auto parsed = std::make_shared<Parsed>();
  parsed->body = jinja::parse(source);
  parsed->source = std::move(source);
  return ChatTemplate(std::move(parsed));
}

const std::string& ChatTemplate::source() const { return parsed_->source; }

namespace {

std::tm local_time(const RenderOptions& options, int* microsecond) {
  std::tm tm{};
  if (!options.now) {
    const auto now = std::chrono::system_clock::now();
    const std::time_t t = std::chrono::system_clock::to_time_t(now);
    localtime_r(&t, &tm);
    *microsecond = static_cast<int>(
        std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() % 1000000);
    return tm;
  }
  using namespace std::chrono;
  const local_seconds t = *options.now;
  const local_days day = floor<days>(t);
  const year_month_day ymd{day};
  const hh_mm_ss hms{t - day};
  tm.tm_year = static_cast<int>(ymd.year()) - 1900;
  tm.tm_mon = static_cast<int>(static_cast<unsigned>(ymd.month())) - 1;
  tm.tm_mday = static_cast<int>(static_cast<unsigned>(ymd.day()));
  tm.tm_hour = static_cast<int>(hms.hours().count());
  tm.tm_min = static_cast<int>(hms.minutes().count());
  tm.tm_sec = static_cast<int>(hms.seconds().count());
  tm.tm_wday = static_cast<int>(weekday{day}.c_encoding());
  tm.tm_yday = static_cast<int>((day - local_days{ymd.year() / January / 1}).count());
  tm.tm_isdst = -1;
  *microsecond = 0;
  return tm;
}

jinja::Value content_string(const std::string& s) { return jinja::Value::string(jinja::Text::all_content(s)); }

}  // namespace

RenderedPrompt ChatTemplate::render(std::span<const Message> messages, const RenderOptions& options) const {
  using jinja::Value;
  std::vector<Value> items;
  items.reserve(messages.size());
  for (const Message& m : messages) {
    jinja::Dict d;
    d.set(Value::string("role"), content_string(m.role));
    d.set(Value::string("content"), content_string(m.content));
    items.push_back(Value::dict(std::move(d)));
  }
  jinja::RenderContext context;
  context.variables = {
      {"messages", Value::sequence(std::move(items))},
      {"tools", Value::none()},
      {"documents", Value::none()},
      {"add_generation_prompt", Value::boolean(options.add_generation_prompt)},
      {"bos_token", Value::string(options.bos_token)},
      {"eos_token", Value::string(options.eos_token)},
  };
  context.now = local_time(options, &context.microsecond);
  jinja::Text text = jinja::render(parsed_->body, context);
  return RenderedPrompt{std::move(text.bytes), std::move(text.content)};
}

std::optional<std::string> model_chat_template(const gguf::File& file) {
  return file.get_string("tokenizer.chat_template");
}

}  // namespace tessera::chat
