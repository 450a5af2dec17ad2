// The CPU kernels compiled for AVX2, FMA and F16C (-mavx2 -mfma -mf16c; chosen at run time).
#define GRADDROP_CPU_NAMESPACE avx2
#include "cpu/combine_kernel_impl.h"

namespace graddrop {
namespace cpu {

const KernelTable kAvx2Kernels = {"avx2", avx2::element_scratch_bytes,
                                   avx2::combine_element_tiles, avx2::strip_scratch_bytes,
                                   avx2::combine_column_strips,
                                   avx2::draw_uniform_float};

}  // namespace cpu
}  // namespace graddrop
