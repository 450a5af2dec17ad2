// The launch plans of the CUDA combine kernels (launch_plan.h): pure host functions, compiled
// into every build so that the CPU test suite can check them.
#include "launch_plan.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

namespace graddrop {
namespace cuda_plan {
namespace {

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

int64_t round_up(int64_t value, int64_t unit) {
  return ceil_div(value, unit) * unit;
}

// Widths a marginalised block may take: kStripGroupColumns .. kMaxStripWidth, powers of two,
// no wider than the call needs. Widest first.
std::vector<int> strip_widths(int64_t columns) {
  int widest = kStripGroupColumns;
  while (widest < kMaxStripWidth && widest < columns) widest *= 2;
  std::vector<int> widths;
  for (int width = widest; width >= kStripGroupColumns; width /= 2) widths.push_back(width);
  return widths;
}

// Threads of `blocks` blocks of `threads` threads resident at once, over the thread slots.
double occupancy_of(const DeviceLimits& device, int64_t blocks, int threads, int64_t shared_bytes,
                    int registers) {
  const int64_t per_sm =
      resident_blocks_per_multiprocessor(device, threads, shared_bytes, registers);
  const int64_t resident = std::min(blocks, per_sm * device.multiprocessors);
  return static_cast<double>(resident * threads) / static_cast<double>(device.thread_slots());
}

int registers_of(const CallShape& shape) {
  return shape.registers_per_thread > 0 ? shape.registers_per_thread : kernel_registers(shape);
}

// Pass 1 keeps this many rows' loads in flight per thread (marginalized_kernel.cuh).
int rows_in_flight_of(int chunk_tasks) {
  return chunk_tasks <= 2 ? 4 : (chunk_tasks <= 4 ? 2 : 1);
}

// One thread per chain of the canonical batch sum (a chunk, a row lane, 4 adjacent columns).
double canonical_bound_of(const CallShape& shape, const DeviceLimits& device) {
  const int64_t full_chunks = shape.rows / detail::kRowChunk;
  const int64_t last_rows = shape.rows % detail::kRowChunk;
  const int64_t lanes = full_chunks * detail::kRowLanes +
                        std::min<int64_t>(last_rows, detail::kRowLanes);
  const double chains = static_cast<double>(lanes) * static_cast<double>(ceil_div(shape.columns, 4));
  return std::min(1.0, chains / static_cast<double>(device.thread_slots()));
}

struct Marginalized {
  const CallShape& shape;
  const DeviceLimits& device;
  int n;
  int chunk_tasks;
  int registers;
  int64_t chunks;
  int64_t one_per_sm;  // dynamic shared memory one block may have
  int64_t two_per_sm;  // ... so that two blocks fit on a multiprocessor

  int64_t layout_bytes(int width, int64_t cache) const {
    return marginalized_layout(n, chunk_tasks, width, shape.opmath_size, shape.statistics, cache)
        .total;
  }
  // kApply's blocks have no row-lane scratch (marginalized_kernel.cuh).
  int64_t apply_layout_bytes(int width) const {
    return marginalized_layout(n, 0, width, shape.opmath_size, shape.statistics, 0).total;
  }
  int64_t cache_bytes(int width) const {
    return marginalized_cache_bytes(shape.rows, width, n, shape.scalar_size);
  }
  int blocks_per_sm(int width, int64_t shared) const {
    return resident_blocks_per_multiprocessor(device, 2 * width, shared, registers);
  }
  double occupancy(int width, int64_t blocks, int64_t shared) const {
    return occupancy_of(device, blocks, 2 * width, shared, registers);
  }

  void fill_fused(LaunchPlan& plan, int width, int64_t shared, bool cache) const {
    plan.path = !cache ? KernelPath::kFusedUncached
                       : (shared + kStaticSharedBytes > kDefaultSharedBytes
                              ? KernelPath::kFusedCachedLarge
                              : KernelPath::kFusedCachedSmall);
    plan.strip_width = width;
    plan.threads = 2 * width;
    plan.strips = ceil_div(shape.columns, width);
    plan.grid_x = plan.strips;
    plan.grid_y = 1;
    plan.shared_bytes = shared;
    plan.cache = cache;
    plan.parts = 1;
    plan.chunks_per_part = std::max<int64_t>(chunks, 1);
    plan.apply_rows = detail::kRowChunk;
    plan.apply_width = width;
    plan.apply_strips = plan.strips;
    plan.apply_parts = 1;
    plan.apply_slices_per_part = std::max<int64_t>(chunks, 1);
    plan.apply_threads = plan.threads;
    plan.apply_shared_bytes = shared;
    plan.sums_occupancy = plan.apply_occupancy = occupancy(width, plan.strips, shared);
  }

  // The split pair with pass 2 on the pass-1 grid (one slice per chunk).
  void fill_split_on_one_grid(LaunchPlan& plan, int width, int64_t parts) const {
    plan.path = KernelPath::kSplit;
    plan.strip_width = width;
    plan.threads = 2 * width;
    plan.strips = ceil_div(shape.columns, width);
    plan.shared_bytes = layout_bytes(width, 0);
    plan.cache = false;
    plan.chunks_per_part = ceil_div(chunks, parts);
    plan.parts = ceil_div(chunks, plan.chunks_per_part);
    plan.grid_x = plan.strips;
    plan.grid_y = plan.parts;
    plan.apply_rows = detail::kRowChunk;
    plan.apply_width = width;
    plan.apply_strips = plan.strips;
    plan.apply_parts = plan.parts;
    plan.apply_slices_per_part = plan.chunks_per_part;
    plan.apply_threads = plan.threads;
    plan.apply_shared_bytes = plan.shared_bytes;
    plan.sums_occupancy = plan.apply_occupancy =
        occupancy(width, plan.strips * plan.parts, plan.shared_bytes);
  }

  // Calls under kLargeCall elements, bound by the launch more than by filling the device: the
  // widest strip whose gradients fit in shared memory while the strips still fill the device;
  // for long batches with few strips the split over chunks of rows; else the widest strip
  // without the cache.
  LaunchPlan plan_small() const {
    LaunchPlan plan;
    const auto widths = strip_widths(shape.columns);
    const bool tiny = shape.rows * shape.columns <= (int64_t(1) << 18);
    constexpr int64_t kFewestResidentThreads = 256;
    if (shape.rows > 0) {
      for (const int64_t budget : {two_per_sm, one_per_sm}) {
        for (const int width : widths) {
          const int64_t strips = ceil_div(shape.columns, width);
          const int64_t shared = layout_bytes(width, cache_bytes(width));
          if (shared <= budget && (strips >= device.multiprocessors || tiny) &&
              (int64_t(blocks_per_sm(width, shared)) * 2 * width >= kFewestResidentThreads ||
               tiny)) {
            fill_fused(plan, width, shared, true);
            return plan;
          }
        }
      }
    }
    int width = widths.front();
    while (width > kStripGroupColumns && layout_bytes(width, 0) > one_per_sm) width /= 2;
    int64_t strips = ceil_div(shape.columns, width);
    if (chunks < 2 || strips >= 2 * device.multiprocessors) {
      while (width > kStripGroupColumns && strips < device.multiprocessors && !tiny) {
        width /= 2;
        strips = ceil_div(shape.columns, width);
      }
      fill_fused(plan, width, layout_bytes(width, 0), false);
      return plan;
    }
    const int64_t wanted = ceil_div(int64_t(device.multiprocessors) * 8, strips);
    fill_split_on_one_grid(plan, width,
                           std::max<int64_t>(1, std::min({wanted, chunks, device.max_grid_y})));
    return plan;
  }

  // Calls of kLargeCall elements or more: a plan whose every phase keeps at least half of the
  // thread slots resident, where the canonical order allows it. Fused (one block per strip,
  // cached if the gradients fit) when the strips alone do; else the split pair, with pass 1 on
  // the strip width and parts that keep the most threads resident (down to one 512-row chunk per
  // block), and pass 2 on its own grid of row slices.
  LaunchPlan plan_large() const {
    LaunchPlan plan;
    const auto widths = strip_widths(shape.columns);
    // Half of the thread slots, or what the kernel's registers let blocks of that width fill.
    auto target = [&](int width) { return std::min(0.5, register_ceiling(device, 2 * width, registers)); };
    for (const int64_t budget : {two_per_sm, one_per_sm}) {
      for (const int width : widths) {
        const int64_t shared = layout_bytes(width, cache_bytes(width));
        if (shared <= budget &&
            occupancy(width, ceil_div(shape.columns, width), shared) >= target(width)) {
          fill_fused(plan, width, shared, true);
          return plan;
        }
      }
    }
    for (const int width : widths) {
      const int64_t shared = layout_bytes(width, 0);
      if (shared <= one_per_sm &&
          occupancy(width, ceil_div(shape.columns, width), shared) >= target(width)) {
        fill_fused(plan, width, shared, false);
        return plan;
      }
    }

    plan.path = KernelPath::kSplit;
    plan.cache = false;
    // Pass 1: every strip width that fits, with one chunk per part; the most resident threads,
    // the widest strip among equals.
    const int64_t most_parts = std::min(chunks, device.max_grid_y);
    int64_t best_resident = -1;
    for (const int width : widths) {
      const int64_t shared = layout_bytes(width, 0);
      if (shared > one_per_sm) continue;
      const int64_t strips = ceil_div(shape.columns, width);
      const int64_t per_sm = blocks_per_sm(width, shared);
      const int64_t resident =
          std::min(strips * most_parts, per_sm * device.multiprocessors) * 2 * width;
      if (resident > best_resident) {
        best_resident = resident;
        plan.strip_width = width;
        plan.strips = strips;
        plan.shared_bytes = shared;
      }
    }
    if (best_resident < 0) {
      // No strip fits (thousands of tasks): the narrowest, which the launcher refuses with the
      // bytes it would need (allow_shared_memory in launch_common.cu).
      plan.strip_width = kStripGroupColumns;
      plan.strips = ceil_div(shape.columns, kStripGroupColumns);
      plan.shared_bytes = layout_bytes(kStripGroupColumns, 0);
    }
    plan.threads = 2 * plan.strip_width;
    // As many chunks per part as still give one full wave of blocks.
    const int64_t wave = int64_t(blocks_per_sm(plan.strip_width, plan.shared_bytes)) *
                         device.multiprocessors;
    plan.chunks_per_part = std::max<int64_t>(1, (plan.strips * chunks) / std::max<int64_t>(wave, 1));
    plan.chunks_per_part = std::max(plan.chunks_per_part, ceil_div(chunks, device.max_grid_y));
    plan.chunks_per_part = std::min(plan.chunks_per_part, chunks);
    plan.parts = ceil_div(chunks, plan.chunks_per_part);
    plan.grid_x = plan.strips;
    plan.grid_y = plan.parts;
    plan.sums_occupancy = occupancy(plan.strip_width, plan.strips * plan.parts, plan.shared_bytes);

    // Pass 2: slices of 512 .. 8 rows; the most resident threads, then the longest slices (each
    // block reads the strip's coefficients once), then the widest strip.
    best_resident = -1;
    for (const int width : widths) {
      const int64_t shared = apply_layout_bytes(width);
      if (shared > one_per_sm) continue;
      const int64_t strips = ceil_div(shape.columns, width);
      const int64_t per_sm = blocks_per_sm(width, shared);
      for (int64_t rows = detail::kRowChunk; rows >= detail::kRowLanes; rows /= 2) {
        const int64_t slices = ceil_div(shape.rows, rows);
        const int64_t per_part = ceil_div(slices, device.max_grid_y);
        const int64_t parts = ceil_div(slices, per_part);
        const int64_t resident =
            std::min(strips * parts, per_sm * device.multiprocessors) * 2 * width;
        if (resident > best_resident) {
          best_resident = resident;
          plan.apply_rows = rows;
          plan.apply_width = width;
          plan.apply_strips = strips;
          plan.apply_parts = parts;
          plan.apply_slices_per_part = per_part;
          plan.apply_shared_bytes = shared;
        }
      }
    }
    if (best_resident < 0) {
      plan.apply_rows = detail::kRowChunk;
      plan.apply_width = kStripGroupColumns;
      plan.apply_strips = plan.strips;
      plan.apply_slices_per_part = std::max<int64_t>(1, ceil_div(chunks, device.max_grid_y));
      plan.apply_parts = ceil_div(chunks, plan.apply_slices_per_part);
      plan.apply_shared_bytes = apply_layout_bytes(kStripGroupColumns);
    }
    plan.apply_threads = 2 * plan.apply_width;
    plan.apply_occupancy = occupancy(plan.apply_width, plan.apply_strips * plan.apply_parts,
                                     plan.apply_shared_bytes);
    return plan;
  }
};

}  // namespace

const char* to_string(KernelPath path) {
  switch (path) {
    case KernelPath::kPerElement:
      return "per_element";
    case KernelPath::kFusedCachedSmall:
      return "marginalized_fused_cached_small";
    case KernelPath::kFusedCachedLarge:
      return "marginalized_fused_cached_large";
    case KernelPath::kFusedUncached:
      return "marginalized_fused_uncached";
    case KernelPath::kSplit:
      return "marginalized_split";
  }
  return "unknown";
}

std::vector<int64_t> to_fields(const DeviceLimits& limits) {
  return {limits.multiprocessors,
          limits.shared_memory_per_multiprocessor,
          limits.shared_memory_per_block_optin,
          limits.reserved_shared_memory_per_block,
          limits.max_threads_per_multiprocessor,
          limits.max_threads_per_block,
          limits.max_blocks_per_multiprocessor,
          limits.registers_per_multiprocessor,
          limits.max_grid_x,
          limits.max_grid_y};
}

DeviceLimits from_fields(const std::vector<int64_t>& fields, const std::string& name) {
  if (fields.size() != static_cast<size_t>(kDeviceLimitFields)) {
    throw std::invalid_argument("graddrop: device limits need " +
                                std::to_string(kDeviceLimitFields) + " values, got " +
                                std::to_string(fields.size()));
  }
  for (const int64_t value : fields) {
    if (value < 0) throw std::invalid_argument("graddrop: a device limit is negative");
  }
  DeviceLimits limits;
  limits.name = name;
  limits.multiprocessors = static_cast<int>(fields[0]);
  limits.shared_memory_per_multiprocessor = fields[1];
  limits.shared_memory_per_block_optin = fields[2];
  limits.reserved_shared_memory_per_block = fields[3];
  limits.max_threads_per_multiprocessor = static_cast<int>(fields[4]);
  limits.max_threads_per_block = static_cast<int>(fields[5]);
  limits.max_blocks_per_multiprocessor = static_cast<int>(fields[6]);
  limits.registers_per_multiprocessor = fields[7];
  limits.max_grid_x = fields[8];
  limits.max_grid_y = fields[9];
  return limits;
}

int resident_blocks_per_multiprocessor(const DeviceLimits& device, int threads,
                                       int64_t shared_bytes, int registers_per_thread) {
  if (threads <= 0 || threads > device.max_threads_per_block) return 0;
  const int64_t warps = ceil_div(threads, 32);
  int64_t blocks = std::min<int64_t>(device.max_blocks_per_multiprocessor,
                                     device.max_threads_per_multiprocessor / (warps * 32));
  // Shared memory is given out in 128-byte units, with the driver's reservation per block.
  const int64_t shared = round_up(shared_bytes + kStaticSharedBytes, 128) +
                         device.reserved_shared_memory_per_block;
  if (shared_bytes + kStaticSharedBytes > device.shared_memory_per_block_optin) return 0;
  blocks = std::min(blocks, device.shared_memory_per_multiprocessor / shared);
  // Registers: per warp in units of 256, inside each of the sub-partitions (as
  // cudaOccupancyMaxActiveBlocksPerMultiprocessor counts them).
  const int64_t per_warp = round_up(int64_t(std::max(registers_per_thread, 1)) * 32, 256);
  const int64_t warps_by_registers =
      (device.registers_per_multiprocessor / kRegisterSubPartitions) / per_warp *
      kRegisterSubPartitions;
  blocks = std::min(blocks, warps_by_registers / warps);
  return static_cast<int>(std::max<int64_t>(blocks, 0));
}

double register_ceiling(const DeviceLimits& device, int threads, int registers_per_thread) {
  const int64_t blocks = resident_blocks_per_multiprocessor(device, threads, 0, registers_per_thread);
  return static_cast<double>(blocks * threads) /
         static_cast<double>(device.max_threads_per_multiprocessor);
}

int kernel_registers(const CallShape& shape) {
  // [storage dtype: 4-byte, 2-byte, 8-byte][chunk: 2, 4, 8, table][statistics: off, on]
  static constexpr int kPerElement[3][4][2] = {
      {{59, 69}, {52, 79}, {69, 120}, {70, 108}},     // float32
      {{67, 105}, {84, 128}, {72, 119}, {72, 107}},   // float16, bfloat16
      {{110, 116}, {102, 126}, {126, 176}, {120, 174}},  // float64
  };
  // __launch_bounds__(512) caps these at 128; float64 reaches the cap and spills.
  static constexpr int kMarginalized[3][4][2] = {
      {{100, 114}, {99, 102}, {108, 111}, {112, 116}},   // float32
      {{105, 106}, {99, 102}, {109, 113}, {113, 117}},   // float16, bfloat16
      {{128, 128}, {128, 128}, {128, 128}, {128, 128}},  // float64
  };
  const int dtype = shape.scalar_size == 2 ? 1 : (shape.scalar_size == 8 ? 2 : 0);
  const int n = shape.num_tasks;
  const int chunk = n <= 2 ? 0 : (n <= 4 ? 1 : (n <= 8 ? 2 : 3));
  const int statistics = shape.statistics ? 1 : 0;
  return shape.marginalized ? kMarginalized[dtype][chunk][statistics]
                            : kPerElement[dtype][chunk][statistics];
}

LaunchPlan plan_per_element(const CallShape& shape, const DeviceLimits& device) {
  LaunchPlan plan;
  plan.path = KernelPath::kPerElement;
  plan.threads = kPerElementThreads;
  plan.shared_bytes = shape.statistics ? int64_t(shape.num_tasks) * 8 : 0;
  const int registers = registers_of(shape);
  const int width = per_element_width_of(shape.scalar_size, chunk_tasks_of(shape.num_tasks));
  const int64_t elements = shape.rows * shape.columns;
  const int64_t per_sm =
      resident_blocks_per_multiprocessor(device, plan.threads, plan.shared_bytes, registers);
  const int64_t resident = std::max<int64_t>(1, per_sm * device.multiprocessors);
  // The longest tiles (fewest statistics rows) that still give every resident block one.
  plan.tile_steps = kMaxTileSteps;
  auto tiles_of = [&](int steps) {
    return ceil_div(elements, int64_t(plan.threads) * width * steps);
  };
  while (plan.tile_steps > 1 && tiles_of(plan.tile_steps) < resident) plan.tile_steps /= 2;
  plan.tiles = tiles_of(plan.tile_steps);
  plan.grid_x = std::max<int64_t>(1, std::min({plan.tiles, resident, device.max_grid_x}));
  plan.grid_y = 1;
  plan.occupancy = occupancy_of(device, plan.grid_x, plan.threads, plan.shared_bytes, registers);
  plan.sums_occupancy = plan.apply_occupancy = plan.occupancy;
  return plan;
}

LaunchPlan plan_marginalized(const CallShape& shape, const DeviceLimits& device) {
  const int n = shape.num_tasks;
  const int64_t reserved_per_block = device.reserved_shared_memory_per_block + kStaticSharedBytes;
  const Marginalized planner{shape,
                             device,
                             n,
                             chunk_tasks_of(n),
                             registers_of(shape),
                             row_chunks_of(shape.rows),
                             device.shared_memory_per_block_optin - kStaticSharedBytes,
                             device.shared_memory_per_multiprocessor / 2 - reserved_per_block};
  LaunchPlan plan = shape.rows * shape.columns >= kLargeCall ? planner.plan_large()
                                                             : planner.plan_small();
  plan.rows_in_flight = rows_in_flight_of(planner.chunk_tasks);
  plan.occupancy = std::min(plan.sums_occupancy, plan.apply_occupancy);
  plan.canonical_bound = canonical_bound_of(shape, device);
  return plan;
}

LaunchPlan plan_launch(const CallShape& shape, const DeviceLimits& device) {
  return shape.marginalized ? plan_marginalized(shape, device) : plan_per_element(shape, device);
}

std::string LaunchPlan::describe() const {
  char text[512];
  if (path == KernelPath::kPerElement) {
    std::snprintf(text, sizeof(text),
                  "%s grid=%lld threads=%d shared=%lld tiles=%lld tile_steps=%d occupancy=%.3f",
                  to_string(path), static_cast<long long>(grid_x), threads,
                  static_cast<long long>(shared_bytes), static_cast<long long>(tiles), tile_steps,
                  occupancy);
  } else {
    std::snprintf(text, sizeof(text),
                  "%s grid=%lldx%lld threads=%d shared=%lld width=%d chunks_per_part=%lld "
                  "apply_grid=%lldx%lld apply_threads=%d apply_shared=%lld apply_rows=%lld "
                  "rows_in_flight=%d occupancy=%.3f sums_occupancy=%.3f apply_occupancy=%.3f "
                  "canonical_bound=%.3f",
                  to_string(path), static_cast<long long>(grid_x), static_cast<long long>(grid_y),
                  threads, static_cast<long long>(shared_bytes), strip_width,
                  static_cast<long long>(chunks_per_part), static_cast<long long>(apply_strips),
                  static_cast<long long>(apply_parts), apply_threads,
                  static_cast<long long>(apply_shared_bytes), static_cast<long long>(apply_rows),
                  rows_in_flight, occupancy, sums_occupancy, apply_occupancy, canonical_bound);
  }
  return text;
}

std::vector<DeviceLimits> published_device_tables() {
  // cudaDeviceProp as the CUDA runtime reports it (CUDA C++ Programming Guide, "Compute
  // Capabilities", and the parts' data sheets for the multiprocessor counts).
  auto device = [](const char* name, int multiprocessors, int64_t shared_per_sm,
                   int64_t shared_optin, int64_t reserved, int threads_per_sm, int blocks_per_sm) {
    DeviceLimits limits;
    limits.name = name;
    limits.multiprocessors = multiprocessors;
    limits.shared_memory_per_multiprocessor = shared_per_sm;
    limits.shared_memory_per_block_optin = shared_optin;
    limits.reserved_shared_memory_per_block = reserved;
    limits.max_threads_per_multiprocessor = threads_per_sm;
    limits.max_threads_per_block = 1024;
    limits.max_blocks_per_multiprocessor = blocks_per_sm;
    limits.registers_per_multiprocessor = 65536;
    limits.max_grid_x = 2147483647;
    limits.max_grid_y = 65535;
    return limits;
  };
  return {
      device("NVIDIA H100 80GB HBM3 (SXM, sm_90)", 132, 233472, 232448, 1024, 2048, 32),
      device("NVIDIA H200 (SXM, sm_90)", 132, 233472, 232448, 1024, 2048, 32),
      device("NVIDIA A100-SXM4-80GB (sm_80)", 108, 167936, 166912, 1024, 2048, 32),
      device("NVIDIA L4 (sm_89)", 58, 102400, 101376, 1024, 1536, 24),
      device("Tesla T4 (sm_75)", 40, 65536, 65536, 0, 1024, 16),
  };
}

}  // namespace cuda_plan
}  // namespace graddrop
