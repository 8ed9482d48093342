// The two ways rendering a chat template fails.
#pragma once

#include <stdexcept>
#include <string>

namespace tessera::chat {

// The template cannot be parsed or rendered: a syntax error, a construct this interpreter does not support, an
// operation Jinja would refuse, or a limit that ends a hostile template. what() is one line,
// "chat template line 12: unsupported filter 'foo'".
class TemplateError : public std::runtime_error {
 public:
  TemplateError(int line, const std::string& message);
  int line() const { return line_; }

 private:
  int line_;
};

// The template called raise_exception(message), usually because the conversation breaks its rules (roles that
// do not alternate, a system message it does not support). what() is the template's message as it gave it.
class TemplateRaised : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace tessera::chat
