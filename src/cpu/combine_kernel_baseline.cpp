// The CPU kernels compiled for the x86-64 (SSE2) or the target's default instruction set.
#define GRADDROP_CPU_NAMESPACE baseline
#include "cpu/combine_kernel_impl.h"

namespace graddrop {
namespace cpu {

const KernelTable kBaselineKernels = {"baseline", baseline::element_scratch_bytes,
                                   baseline::combine_element_tiles, baseline::strip_scratch_bytes,
                                   baseline::combine_column_strips,
                                   baseline::draw_uniform_float};

}  // namespace cpu
}  // namespace graddrop
