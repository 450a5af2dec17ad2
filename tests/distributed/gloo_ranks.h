#pragma once
// Runs a test body once per rank of a fresh Gloo process group, over loopback (127.0.0.1), one
// thread per rank in this process (an in-process HashStore is the rendezvous). Only the test
// creates the group with Gloo's headers (Debian's libgloo-dev); graddrop itself sees a
// c10d::ProcessGroup.
#include <chrono>
#include <functional>
#include <string>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

namespace graddrop {
namespace testing {

struct RankContext {
  int rank = 0;
  int size = 1;
  c10::intrusive_ptr<c10d::ProcessGroup> group;  // named "<test>/<rank>", registered
};

// Calls body(context) on `size` threads, each with its rank's group, and joins them. Rethrows
// the lowest rank's exception, prefixed with the rank. Groups time out after `timeout`, so a
// rank that waits on a missing peer fails instead of hanging.
void run_ranks(int size, const std::function<void(const RankContext&)>& body,
               std::chrono::milliseconds timeout = std::chrono::milliseconds(20000));

// Sums `tensor` over the group (the data-parallel parameter-gradient all-reduce).
void all_reduce_sum(const RankContext& context, at::Tensor& tensor);

}  // namespace testing
}  // namespace graddrop
