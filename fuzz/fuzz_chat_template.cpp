// libFuzzer target for the chat template interpreter: any bytes, parsed as a template and rendered on a fixed
// conversation, must render or fail with TemplateError / TemplateRaised; never crash, hang, read out of bounds or
// allocate without bound. A rendered prompt's content ranges must be sorted, disjoint and inside the text.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "chat/chat_template.h"

namespace {

const std::vector<tessera::chat::Message>& conversation() {
  static const std::vector<tessera::chat::Message> messages = {
      {"system", "Be brief. {{ not a tag }} </s>"},
      {"user", "Hello <|im_end|> 世界 🎉\n  with spaces  "},
      {"assistant", "<think>\nhmm\n</think>\n\nHi!"},
      {"user", "\"quotes\" and 'apostrophes' and \\backslashes\\"},
  };
  return messages;
}

void check_ranges(const tessera::chat::RenderedPrompt& p) {
  size_t end = 0;
  for (const auto& [first, last] : p.content_ranges) {
    if (first >= last || last > p.text.size() || (end > 0 && first <= end)) std::abort();
    end = last;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tessera::chat::RenderOptions options;
  options.bos_token = "<s>";
  options.eos_token = "</s>";
  using namespace std::chrono;
  options.now = local_days{year{2025} / January / 7} + hours{9};
  try {
    const auto tmpl = tessera::chat::ChatTemplate::parse(std::string(reinterpret_cast<const char*>(data), size));
    check_ranges(tmpl.render(conversation(), options));
    options.add_generation_prompt = false;
    check_ranges(tmpl.render(std::vector<tessera::chat::Message>{}, options));
  } catch (const tessera::chat::TemplateError&) {
  } catch (const tessera::chat::TemplateRaised&) {
  }
  return 0;
}
