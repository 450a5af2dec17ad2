#pragma once
// Global batch marginalisation: what one combine call exchanges with the other ranks of a c10d
// process group. Every device's kernel runs the same protocol (README, "Data-parallel"):
//   1. agree(): every rank sends a description of its call (task count, dtype, P's shape,
//      options, its Philox key); all must agree, and rank 0's key becomes everyone's key, so
//      every rank draws the same U;
//   2. sum() of the local [num_tasks, F] column sums of the signals G_i: P and the signs of the
//      G_i are then those of the global batch, identical on every rank;
//   3. with keep_grad_norm, sum() of the two squared norms.
// Collective failures (a rank that never joins, a timeout, a closed connection) come back as a
// c10::Error naming the group, the step and the shape, within the group's own timeout.
//
// This header names no c10d type, so the CUDA sources can include it.
#include <cstdint>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

#include "ops/combine_op.h"

namespace graddrop {
namespace distributed {

// The Philox key of a call.
struct CallKey {
  uint64_t seed = 0;
  uint64_t offset = 0;
};

// One combine call's exchanges with group `group_name` (resolved in c10d's registry).
class GroupCall {
 public:
  // Resolves the group; refuses a name the registry does not know, or a build without c10d.
  GroupCall(const std::string& group_name, const ops::CombineArguments& arguments);
  ~GroupCall();

  // Step 1: exchanges the call descriptions; throws unless every rank agrees; returns rank 0's
  // key (each rank passes its own, drawn as without a group, so generators advance alike).
  CallKey agree(CallKey local_key);

  // Sums `values` (contiguous, on the activation's device) over the ranks, in place.
  void sum(at::Tensor& values, const char* what);

  int rank() const;
  int size() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Undefined task gradients replaced by zeros: every rank must contribute a row of column sums
// for every task, including those whose head had no loss on this rank.
void materialise_zero_grads(ops::CombineArguments& arguments);

}  // namespace distributed
}  // namespace graddrop
