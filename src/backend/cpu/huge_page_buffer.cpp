#include "backend/cpu/huge_page_buffer.h"

#include <sys/mman.h>

#include <cstdlib>
#include <new>

namespace tessera::cpu {

namespace {
constexpr size_t kHugePage = size_t{2} << 20;
}

HugePageBuffer::HugePageBuffer(size_t bytes) : size_(bytes) {
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = std::aligned_alloc(kHugePage, rounded == 0 ? kHugePage : rounded);
  if (!p) throw std::bad_alloc();
  // Advice only: where transparent huge pages are off, the buffer simply stays on small pages.
  madvise(p, rounded, MADV_HUGEPAGE);
  data_.reset(static_cast<uint8_t*>(p));
}

void HugePageBuffer::Free::operator()(uint8_t* p) const { std::free(p); }

}  // namespace tessera::cpu
