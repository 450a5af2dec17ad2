#pragma once
// What the CPU and the GPU suites share so that an API change breaks a CPU test, not only a GPU
// one: the operator call of the GPU out-of-range tests (run by the CPU suite with the same
// arguments, tests/cpu/operator_calls_test.cpp), and the shapes of the GPU stream and graph
// tests, whose kernel paths the CPU suite plans on published device tables
// (tests/cpu/gpu_coverage_test.cpp).
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

#include "graddrop/compat.h"
#include "graddrop/options.h"

namespace graddrop {
namespace testing {

// graddrop::combine through the dispatcher, as Python calls it, with the explicit tensors given
// and the rest at their schema defaults; with keep_probability given the keep function is
// 'custom' (the operator refuses it with any other). Returns the output.
at::Tensor call_combine_operator(const at::Tensor& activation, const std::vector<at::Tensor>& grads,
                                 bool marginalize, const optional<at::Tensor>& uniform,
                                 const optional<at::Tensor>& keep_probability);

// One call of a GPU stream or graph test, float32.
struct GpuPathCase {
  const char* name;
  std::vector<int64_t> shape;
  int64_t num_tasks;
  bool marginalize;
  bool keep_grad_norm;
  bool statistics;  // the call asks for the statistics

  GradDropOptions options() const;
};

// tests/cuda/combine_cuda_stream_graph_test.cpp: the calls on a side stream
// (CudaStreams.KernelsRunOnTheCurrentStream), the calls captured drawing from the default
// generator (CudaGraphs.DefaultGeneratorReplaysDrawAnewAndMatchEagerCalls), and with an explicit
// U (CudaGraphs.ExplicitUniformIsReadAtReplay). Every kernel path on an H100 and an A100 is in
// the first list and in the union of the other two (tests/cpu/gpu_coverage_test.cpp).
std::vector<GpuPathCase> gpu_stream_cases();
std::vector<GpuPathCase> gpu_graph_generator_cases();
std::vector<GpuPathCase> gpu_graph_uniform_cases();

}  // namespace testing
}  // namespace graddrop
