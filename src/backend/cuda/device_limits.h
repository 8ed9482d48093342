// The numbers of the current GPU that the kernels size their grids and shared memory by.
#pragma once

namespace tessera::cuda {

struct DeviceLimits {
  int sm_count = 0;
  int max_shared_per_block = 0;  // with the opt-in (cudaDevAttrMaxSharedMemoryPerBlockOptin)
  int shared_per_sm = 0;
  int reserved_shared_per_block = 0;
};

// Of the current device (cudaGetDevice); throws when the runtime cannot say.
DeviceLimits current_device_limits();

}  // namespace tessera::cuda
