// The CUDA runtime entry points the rest of the engine calls (storage, the bindings, the
// communicator): defined by cuda/runtime.cu and cuda/gemm.cu in a CUDA build, and by
// cuda/no_cuda.cpp without CUDA, where they answer "nothing there" or raise a clear error.
#pragma once

#include <cstddef>
#include <string>

#include "steepest/storage.h"

namespace steepest {

bool cuda_available();
int cuda_device_count();
std::string cuda_device_name(int device_index);
void* cuda_allocate(size_t nbytes, int device_index);
void cuda_deallocate(void* p, size_t nbytes, int device_index);
AllocatorStats cuda_allocator_stats(int device_index);
void cuda_allocator_empty_cache();
void cuda_allocator_reset_peak(int device_index);
void cuda_synchronize(int device_index);
void cuda_set_allow_tf32(bool allow);
bool cuda_allow_tf32();
std::string cublas_info();

}  // namespace steepest
