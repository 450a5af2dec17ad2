// The CPU kernels compiled for AVX-512 F/BW/VL/DQ (chosen at run time).
#define GRADDROP_CPU_NAMESPACE avx512
#include "cpu/combine_kernel_impl.h"

namespace graddrop {
namespace cpu {

const KernelTable kAvx512Kernels = {"avx512", avx512::element_scratch_bytes,
                                   avx512::combine_element_tiles, avx512::strip_scratch_bytes,
                                   avx512::combine_column_strips,
                                   avx512::draw_uniform_float};

}  // namespace cpu
}  // namespace graddrop
