#pragma once
// The launch plans of the CUDA combine kernels, as pure host functions of the call's shape and a
// few device limits. Plain C++17 without CUDA headers: the library compiles this in every build,
// so the CPU test suite checks the plans against published device tables
// (tests/cpu/launch_plan_test.cpp), and the launchers (per_element_launch.cu,
// marginalized_launch.cu) launch exactly what these functions return.
//
// The plans change only the speed, never a value: every sum a kernel forms follows an order fixed
// by the call (the canonical batch sums of src/detail/math.h, the per-element tiles
// and the pass-2 row slices below), not by the grid.
#include <cstdint>
#include <string>
#include <vector>

#include "detail/host_device.h"
#include "detail/math.h"

namespace graddrop {
namespace cuda_plan {

// What the plans read of a device: cudaDeviceProp's fields on a GPU
// (device_limits_of in cuda/launch_common.cu), published tables in tests.
struct DeviceLimits {
  std::string name;
  int multiprocessors = 0;                         // multiProcessorCount
  int64_t shared_memory_per_multiprocessor = 0;    // sharedMemPerMultiprocessor, bytes
  int64_t shared_memory_per_block_optin = 0;       // sharedMemPerBlockOptin, bytes
  int64_t reserved_shared_memory_per_block = 0;    // reservedSharedMemPerBlock, bytes
  int max_threads_per_multiprocessor = 0;          // maxThreadsPerMultiProcessor
  int max_threads_per_block = 0;                   // maxThreadsPerBlock
  int max_blocks_per_multiprocessor = 0;           // maxBlocksPerMultiProcessor
  int64_t registers_per_multiprocessor = 0;        // regsPerMultiprocessor
  int64_t max_grid_x = 0;                          // maxGridSize[0]
  int64_t max_grid_y = 0;                          // maxGridSize[1]

  int64_t thread_slots() const {
    return int64_t(multiprocessors) * max_threads_per_multiprocessor;
  }
};

// The limits in the order torch.ops.graddrop.launch_plan takes them (launch_plan_op.cpp):
// multiprocessors, shared memory per multiprocessor, per block opt-in, reserved per block,
// threads per multiprocessor, threads per block, blocks per multiprocessor, registers per
// multiprocessor, grid x, grid y.
constexpr int kDeviceLimitFields = 10;
std::vector<int64_t> to_fields(const DeviceLimits& limits);
DeviceLimits from_fields(const std::vector<int64_t>& fields, const std::string& name = "given");

// One combine call as the plans see it.
struct CallShape {
  int64_t rows = 1;       // marginalised: size(0) of the activation; per element: 1
  int64_t columns = 0;    // marginalised: the other dimensions; per element: numel
  int num_tasks = 1;
  int scalar_size = 4;    // bytes of the storage dtype
  int opmath_size = 4;    // bytes of the op-math dtype (float for 16-bit dtypes)
  bool statistics = false;  // keep_grad_norm or statistics: the kernels write partial rows
  bool marginalized = true;
  // The kernel's registers per thread (cudaFuncAttributes::numRegs on a GPU); 0:
  // kernel_registers(shape), the sm_90 counts of this build.
  int registers_per_thread = 0;
};

enum class KernelPath {
  kPerElement,
  kFusedCachedSmall,  // marginalised, one block per strip, gradients in <= 48 KB shared memory
  kFusedCachedLarge,  // the same over 48 KB (the opt-in shared memory)
  kFusedUncached,     // marginalised, one block per strip, gradients read twice
  kSplit,             // marginalised, chunk sums over (strip, part) blocks, then the apply grid
};
const char* to_string(KernelPath path);

// ---- What the kernels and the plans share -------------------------------------------------

constexpr int kPerElementThreads = 256;  // threads per block of the per-element kernel
constexpr int kMaxTileSteps = 8;         // per element: steps of a tile at most
constexpr int kStripGroupColumns = 16;   // marginalised statistics row = narrowest strip
constexpr int kMaxStripWidth = 256;      // marginalised: columns per strip at most (512 threads)
constexpr int kStaticSharedBytes = 64;   // a bound on the kernels' static shared memory
// Registers per thread of the kernel a call runs when the call does not give the count (the
// launchers always give the driver's, cudaFuncAttributes::numRegs): what ptxas reports for
// sm_90 with nvcc 13.0 and this repository's flags (-O3 --fmad=false), per kernel (per element
// or marginalised), storage dtype size, task chunk (2, 4, 8, or the task table beyond 8 tasks)
// and statistics. docs/gpu-launch-plans.md lists them and says how to read them from a build.
int kernel_registers(const CallShape& shape);
// Register sub-partitions of a multiprocessor (sm_70 and later, every table here): registers
// are given out per warp inside a sub-partition.
constexpr int kRegisterSubPartitions = 4;
constexpr int64_t kLargeCall = int64_t(1) << 20;  // elements from which the device must be filled
constexpr int64_t kDefaultSharedBytes = 48 * 1024;  // per block without the opt-in

// Tasks a kernel holds in registers at once (the task list's chunk: combine_common.cuh).
constexpr int chunk_tasks_of(int num_tasks) {
  return num_tasks <= 2 ? 2 : (num_tasks <= 4 ? 4 : 8);
}

// Per element: elements per thread and step (16 bytes of each input for 16-bit types with few
// tasks, one Philox group of 4 otherwise).
constexpr GRADDROP_HOST_DEVICE int per_element_width_of(int scalar_size, int chunk_tasks) {
  return scalar_size == 2 && chunk_tasks <= 4 ? 8 : 4;
}

constexpr GRADDROP_HOST_DEVICE int64_t row_chunks_of(int64_t rows) {
  return (rows + detail::kRowChunk - 1) / detail::kRowChunk;
}

constexpr GRADDROP_HOST_DEVICE int64_t align_shared(int64_t bytes) {
  return (bytes + 31) / 32 * 32;
}

// Dynamic shared memory of one marginalised block, in bytes from the base.
struct MarginalizedLayout {
  int64_t column_values;  // [num_tasks][W] op-math: column sums, then coefficients
  int64_t lane_scratch;   // [kRowLanes][chunk tasks][W] op-math: a chunk's row-lane sums
  int64_t statistics;     // [2W][3] double: per-thread sums before the group reductions
  int64_t kept;           // [2W / 8][num_tasks] unsigned: kept counts per column lane
  int64_t cache;          // [iterations][num_tasks][2W][4] scalar_t (kFused with cache)
  int64_t total;
};

constexpr GRADDROP_HOST_DEVICE MarginalizedLayout marginalized_layout(int num_tasks, int chunk_tasks,
                                                            int width, int opmath_size,
                                                            bool statistics, int64_t cache_bytes) {
  const int64_t threads = 2 * width;
  MarginalizedLayout layout{};
  layout.column_values = 0;
  layout.lane_scratch = align_shared(int64_t(num_tasks) * width * opmath_size);
  layout.statistics = layout.lane_scratch +
                      align_shared(int64_t(detail::kRowLanes) * chunk_tasks * width * opmath_size);
  layout.kept = layout.statistics + (statistics ? align_shared(threads * 3 * 8) : 0);
  layout.cache = layout.kept + (statistics ? align_shared(width / 4 * int64_t(num_tasks) * 4) : 0);
  layout.total = layout.cache + cache_bytes;
  return layout;
}

// Bytes of the gradient cache for `rows` rows of a strip of `width` columns.
constexpr GRADDROP_HOST_DEVICE int64_t marginalized_cache_bytes(int64_t rows, int width, int num_tasks,
                                                      int scalar_size) {
  const int64_t iterations = (rows + detail::kRowLanes - 1) / detail::kRowLanes;
  return iterations * num_tasks * (2 * width) * 4 * scalar_size;
}

// ---- The plans -----------------------------------------------------------------------------

struct LaunchPlan {
  KernelPath path = KernelPath::kPerElement;
  // The first (per element and fused: the only) kernel: grid, threads per block, dynamic shared
  // memory per block. For kSplit this is the chunk-sum kernel (kPartial).
  int64_t grid_x = 0;
  int64_t grid_y = 1;
  int threads = 0;
  int64_t shared_bytes = 0;
  // Per element: steps per tile (a tile is threads * width * tile_steps elements, one
  // statistics row each) and the tiles.
  int tile_steps = 0;
  int64_t tiles = 0;
  // Marginalised: the strip width (columns per block, threads = 2 * width), strips, the parts
  // along a strip (kSplit) and the 512-row chunks of each.
  int strip_width = 0;
  int64_t strips = 0;
  int64_t parts = 1;
  int64_t chunks_per_part = 0;
  bool cache = false;
  // Pass 2 (out = sum_i c_i g_i): rows per slice (a multiple of kRowLanes; one statistics row
  // per slice and 16 columns) and, for kSplit, the apply kernel's own grid: strips of
  // apply_width columns by apply_parts runs of apply_slices_per_part slices.
  int64_t apply_rows = detail::kRowChunk;
  int apply_width = 0;
  int64_t apply_strips = 0;
  int64_t apply_parts = 1;
  int64_t apply_slices_per_part = 0;
  int apply_threads = 0;
  int64_t apply_shared_bytes = 0;
  int rows_in_flight = 1;  // pass-1 rows whose loads a thread issues before using any
  // Resident thread slots used / the device's thread slots, as the plan estimates them (blocks
  // resident at once, limited by the grid, threads, shared memory and registers): of pass 1
  // (sums), of pass 2 (apply), and the lower of the two. Per element: all three equal.
  double sums_occupancy = 0.0;
  double apply_occupancy = 0.0;
  double occupancy = 0.0;
  // The most pass 1 can reach under the canonical order: one thread per chain of the canonical
  // batch sum (a chunk, a row lane, 4 adjacent columns), over the device's thread slots, <= 1.
  double canonical_bound = 1.0;

  std::string describe() const;  // "marginalized_split grid=... occupancy=0.62 ..."
};

LaunchPlan plan_per_element(const CallShape& shape, const DeviceLimits& device);
LaunchPlan plan_marginalized(const CallShape& shape, const DeviceLimits& device);
LaunchPlan plan_launch(const CallShape& shape, const DeviceLimits& device);

// Blocks of `threads` threads with `shared_bytes` of dynamic shared memory and
// `registers_per_thread` that fit on one multiprocessor at once (0 when one does not fit).
int resident_blocks_per_multiprocessor(const DeviceLimits& device, int threads,
                                       int64_t shared_bytes, int registers_per_thread);

// The share of a multiprocessor's thread slots that blocks of `threads` threads with
// `registers_per_thread` can fill, whatever their shared memory: with more than 64 registers per
// thread (every marginalised kernel, most per-element ones) it is below 0.5.
double register_ceiling(const DeviceLimits& device, int threads, int registers_per_thread);

// H100 SXM, H200, A100 80 GB, L4, T4: their published cudaDeviceProp values.
std::vector<DeviceLimits> published_device_tables();

}  // namespace cuda_plan
}  // namespace graddrop
