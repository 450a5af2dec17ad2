#pragma once
// GRADDROP_HOST_DEVICE marks the shared math so that one definition serves the C++ (CPU)
// and the CUDA kernels.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define GRADDROP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GRADDROP_HOST_DEVICE inline
#endif
