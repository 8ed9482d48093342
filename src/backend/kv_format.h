// How the KV cache stores keys and values; shared by the backends and their kernels.
#pragma once

#include <string_view>

namespace tessera {

enum class KvFormat { F16, F32 };
std::string_view kv_format_name(KvFormat format);

}  // namespace tessera
