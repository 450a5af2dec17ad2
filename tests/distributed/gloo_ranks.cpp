#include "gloo_ranks.h"

#include <atomic>
#include <cstdlib>
#include <exception>
#include <thread>
#include <vector>

#include <c10/util/Exception.h>
#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

namespace graddrop {
namespace testing {
namespace {

c10::intrusive_ptr<c10d::ProcessGroup> gloo_group(const c10::intrusive_ptr<c10d::Store>& store,
                                                  int rank, int size,
                                                  std::chrono::milliseconds timeout,
                                                  const std::string& name) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
  auto group = c10::make_intrusive<c10d::ProcessGroup>(store, rank, size);
  // Gloo also takes CUDA tensors (through host copies): one GPU serves every rank.
  group->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, backend);
  group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::GLOO, backend);
  group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
  group->setGroupName(name);
  return group;
}

}  // namespace

void run_ranks(int size, const std::function<void(const RankContext&)>& body,
               std::chrono::milliseconds timeout) {
  // c10d's flight recorder (a process-wide singleton, on by default) registers each group on its
  // first collective by writing a map outside its mutex (FlightRecorder::recordWithResetEnabled,
  // torch 2.11): several groups in one process starting collectives at once, as the ranks here
  // do, race on it (ASan caught the crash). Off for these tests, unless the caller chose.
  setenv("TORCH_FR_BUFFER_SIZE", "0", /*overwrite=*/0);
  static std::atomic<int> groups_made{0};
  const int id = groups_made++;
  const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string prefix =
      std::string(test != nullptr ? test->name() : "group") + "#" + std::to_string(id);
  auto store = c10::make_intrusive<c10d::PrefixStore>(prefix, c10::make_intrusive<c10d::HashStore>());
  std::vector<std::exception_ptr> errors(static_cast<size_t>(size));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < size; ++rank) {
    threads.emplace_back([&, rank] {
      const std::string name = prefix + "/" + std::to_string(rank);
      try {
        RankContext context{rank, size, gloo_group(store, rank, size, timeout, name)};
        body(context);
      } catch (...) {
        errors[static_cast<size_t>(rank)] = std::current_exception();
      }
      // graddrop registers the group under its name on first use; the test owns its end.
      try {
        c10d::unregister_process_group(name);
      } catch (...) {
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int rank = 0; rank < size; ++rank) {
    if (!errors[static_cast<size_t>(rank)]) continue;
    try {
      std::rethrow_exception(errors[static_cast<size_t>(rank)]);
    } catch (const c10::Error& error) {
      TORCH_CHECK(false, "rank ", rank, ": ", error.what_without_backtrace());
    } catch (const std::exception& error) {
      TORCH_CHECK(false, "rank ", rank, ": ", error.what());
    }
  }
}

void all_reduce_sum(const RankContext& context, at::Tensor& tensor) {
  std::vector<at::Tensor> tensors{tensor};
  context.group->allreduce(tensors)->wait();
}

}  // namespace testing
}  // namespace graddrop
