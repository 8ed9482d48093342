// A large buffer on 2 MiB pages where the kernel grants them. Decode streams every interleaved weight once per
// token; on 4 KiB pages that is a TLB miss every 4 KiB of a one-core stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace tessera::cpu {

class HugePageBuffer {
 public:
  HugePageBuffer() = default;  // empty
  explicit HugePageBuffer(size_t bytes);  // uninitialised; throws std::bad_alloc when memory runs out

  uint8_t* data() const { return data_.get(); }
  size_t size() const { return size_; }  // the bytes asked for

 private:
  struct Free {
    void operator()(uint8_t* p) const;
  };
  std::unique_ptr<uint8_t, Free> data_;
  size_t size_ = 0;
};

}  // namespace tessera::cpu
