#include <algorithm>
#include <stdexcept>

#include "backend/backend.h"

namespace tessera {

BackendRegistry& BackendRegistry::instance() {
  static BackendRegistry registry = [] {
    BackendRegistry r;
    r.add({"cpu", [] { return std::string(); }, make_cpu_backend});
    return r;
  }();
  return registry;
}

void BackendRegistry::add(BackendEntry entry) {
  if (find(entry.name)) throw std::logic_error("backend '" + entry.name + "' is registered twice");
  entries_.push_back(std::move(entry));
}

const BackendEntry* BackendRegistry::find(std::string_view name) const {
  const auto it = std::find_if(entries_.begin(), entries_.end(), [&](const BackendEntry& e) { return e.name == name; });
  return it == entries_.end() ? nullptr : &*it;
}

std::vector<std::string> BackendRegistry::names() const {
  std::vector<std::string> names;
  for (const BackendEntry& e : entries_) names.push_back(e.name);
  return names;
}

}  // namespace tessera
