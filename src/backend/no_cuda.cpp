// Built only when Tessera is compiled without CUDA.
#include <stdexcept>

#include "backend/backend.h"

namespace tessera {

std::unique_ptr<Backend> make_cuda_backend(const model::LlamaModel&, const BackendOptions&) {
  throw std::runtime_error("this tessera was built without CUDA (configure with -DTESSERA_CUDA=ON and nvcc)");
}

std::unique_ptr<Backend> make_hybrid_backend(const model::LlamaModel&, const BackendOptions&) {
  throw std::runtime_error("this tessera was built without CUDA, so --backend hybrid is unavailable");
}

}  // namespace tessera
