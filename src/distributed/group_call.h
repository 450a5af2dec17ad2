#pragma once
// Global batch marginalisation: what one combine call exchanges with the other ranks of a c10d
// process group, for the protocol of group_combine.h (docs/distributed.md):
//   1. exchange(): the local [num_tasks, F] column sums of the signals G_i are summed over the
//      ranks (P and the signs of the G_i are then those of the global batch, identical on every
//      rank), and rank 0's Philox key becomes everyone's (every rank draws the same U). The
//      ranks must agree on the call (task count, dtype, feature shape, options): the first call
//      on a group all-gathers every rank's description and checks it; later calls carry a hash
//      of it inside the one all-reduce of the sums, and go back to the full exchange when the
//      hashes or the sizes differ. One collective per call in the steady state.
//   2. with keep_grad_norm, sum() of the two squared norms.
// A collective whose size differs between ranks would abort the process inside Gloo, so the
// all-reduce always has the size all ranks last agreed on. Collective failures (a rank that
// never joins, a timeout, a closed connection) come back as a c10::Error naming the group, the
// step and the shape, within the group's own timeout.
//
// This header names no c10d type.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "ops/combine_op.h"

namespace graddrop {
namespace distributed {

// The Philox key of a call.
using CallKey = ops::PhiloxKey;

// One combine call's exchanges with group `group_name` (resolved in c10d's registry).
class GroupCall {
 public:
  // Resolves the group; refuses a name the registry does not know, or a build without c10d.
  GroupCall(const std::string& group_name, const ops::CombineArguments& arguments);
  ~GroupCall();

  // Step 1: sums `column_sums` ([num_tasks, F] in op-math, contiguous; undefined in per-element
  // mode) over the ranks in place and returns rank 0's key (each rank passes its own, drawn as
  // without a group, so the generators advance alike). Throws unless every rank made the same
  // call (only the batch size may differ).
  CallKey exchange(CallKey local_key, const at::Tensor& column_sums);

  // Sums `values` (contiguous, on the activation's device) over the ranks, in place.
  void sum(at::Tensor& values, const char* what);

  // Step 2, keep_grad_norm: sums the kernels' two squared norms (ops::output_square_slot and
  // plain_square_slot of the accumulators) over the ranks, in place.
  void sum_squared_norms(const at::Tensor& accumulators);

  int rank() const;
  int size() const;

 private:
  // The full exchange: all-gathers the call descriptions, checks them, returns rank 0's key.
  CallKey agree(CallKey local_key);
  // This call's description (the int64 slots of group_call.cpp) with `local_key`.
  void describe_into(std::vector<int64_t>& slots, CallKey local_key) const;

  struct State;
  std::unique_ptr<State> state_;
};

// Undefined task gradients replaced by zeros: every rank must contribute a row of column sums
// for every task, including those whose head had no loss on this rank.
void materialise_zero_grads(ops::CombineArguments& arguments);

}  // namespace distributed
}  // namespace graddrop
