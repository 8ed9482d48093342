#include "util/cpu_info.h"

#include <fstream>
#include <set>
#include <thread>
#include <utility>

namespace tessera::util {

std::string cpu_device_name(int n_threads) {
  // The first processor's fields. A virtual machine's model name may say only "AMD EPYC"; the family and model
  // numbers tell its generations apart, which decide the kernels' prefetch (quant::weight_prefetch_for_cpu).
  std::string name = "unknown CPU", family, model;
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line) && !line.empty();) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    const size_t first = line.find_first_not_of(" \t", colon + 1);
    const std::string value = first == std::string::npos ? "" : line.substr(first);
    if (line.rfind("model name", 0) == 0) {
      name = value;
    } else if (line.rfind("cpu family", 0) == 0) {
      family = value;
    } else if (line.rfind("model\t", 0) == 0) {
      model = value;
    }
  }
  const std::string id = family.empty() ? "" : "family " + family + " model " + model + ", ";
  return name + " (" + id + std::to_string(n_threads) + (n_threads == 1 ? " thread)" : " threads)");
}

int physical_core_count() {
  // Count distinct (package, core) pairs; fall back to the logical count.
  std::set<std::pair<int, int>> cores;
  const unsigned logical = std::thread::hardware_concurrency();
  for (unsigned cpu = 0; cpu < logical; ++cpu) {
    const std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream core_file(base + "core_id"), package_file(base + "physical_package_id");
    int core = -1, package = -1;
    if (!(core_file >> core) || !(package_file >> package)) return logical > 0 ? static_cast<int>(logical) : 1;
    cores.insert({package, core});
  }
  if (cores.empty()) return logical > 0 ? static_cast<int>(logical) : 1;
  return static_cast<int>(cores.size());
}

}  // namespace tessera::util
