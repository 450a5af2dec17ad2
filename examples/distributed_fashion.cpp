// Multi-Fashion trained data-parallel by N processes (one per rank; scripts/demo_distributed.sh
// launches them), the way C++ LibTorch users do data parallelism: parameters broadcast from
// rank 0, each rank runs forward and ONE backward on its slice of every global batch, the
// parameter gradients are averaged with one all-reduce, every rank steps its optimiser. The
// GradDropLayer carries the process group, so its purity, draw and masks are those of the
// global batch (--purity=global), or each rank's own (--purity=local). With --world-size=1 it
// is the single-process run on the same global batches, for comparison.
//
//   distributed_fashion --rank=R --world-size=N [--master-port=P] [demo flags ...]
//   distributed_fashion --help
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if defined(GRADDROP_EXAMPLE_NCCL)
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "fashion/command_line.h"
#include "fashion/idx_file.h"
#include "fashion/lenet.h"
#include "fashion/multi_fashion.h"
#include "fashion/training.h"
#include "graddrop/graddrop.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Waits for the GPU's queued work when the data lives there (before reading a clock).
void synchronize(const fashion::MultiFashionSet& data) {
  if (data.images.is_cuda()) torch::cuda::synchronize();
}

// The flags of this program; every other flag is the demo's (fashion/command_line.h).
struct RankSettings {
  int rank = 0;
  int world_size = 1;
  std::string master_address = "127.0.0.1";
  int master_port = 29512;
  std::string purity = "global";  // global, local or none (equal weights)
  int timeout_seconds = 60;
  bool compare_step_time = false;
};

std::string usage(const std::string& program) {
  return "Usage: " + program +
         " --rank=R --world-size=N [--name=value ...]\n"
         "Data-parallel Multi-Fashion with GradDrop: one process per rank, Gloo over TCP.\n"
         "  --rank=R             this process's rank (0)\n"
         "  --world-size=N       number of processes (1: the single-process run)\n"
         "  --master-addr=HOST   rank 0's address for the TCPStore rendezvous (127.0.0.1)\n"
         "  --master-port=P      its port (29512)\n"
         "  --purity=MODE        global (one purity across all ranks), local (each rank its own)\n"
         "                       or none (equal weights, no GradDrop) (global)\n"
         "  --timeout=S          collective timeout in seconds (60)\n"
         "  --compare-step-time  time a step of equal weights, local and global purity\n"
         "                       side by side instead of training\n"
         "--batch-size is the GLOBAL batch, split evenly between the ranks. The demo's flags\n"
         "(--epochs, --lr, --optimizer, --train-size, --seeds (first seed only), --threads,\n"
         "GradDrop's options, ...) are accepted as by multitask_fashion --help.\n"
         "--device=cuda: one GPU per rank (cuda:<rank mod GPUs>) and NCCL (builds with NCCL's\n"
         "header only; otherwise Gloo with CPU tensors only).\n";
}

// Takes this program's flags out of `arguments`, leaving the demo's.
RankSettings take_rank_flags(std::vector<std::string>& arguments) {
  RankSettings settings;
  std::vector<std::string> rest;
  for (const auto& argument : arguments) {
    const auto equals = argument.find('=');
    const std::string name = argument.substr(0, equals);
    const std::string value = equals == std::string::npos ? "" : argument.substr(equals + 1);
    if (name == "--rank") {
      settings.rank = std::stoi(value);
    } else if (name == "--world-size") {
      settings.world_size = std::stoi(value);
    } else if (name == "--master-addr") {
      settings.master_address = value;
    } else if (name == "--master-port") {
      settings.master_port = std::stoi(value);
    } else if (name == "--purity") {
      settings.purity = value;
    } else if (name == "--timeout") {
      settings.timeout_seconds = std::stoi(value);
    } else if (name == "--compare-step-time") {
      settings.compare_step_time = value.empty() || value == "true";
    } else {
      rest.push_back(argument);
    }
  }
  arguments = rest;
  if (settings.world_size < 1 || settings.rank < 0 || settings.rank >= settings.world_size) {
    throw fashion::UsageError("--rank must be in [0, --world-size)");
  }
  if (settings.purity != "global" && settings.purity != "local" && settings.purity != "none") {
    throw fashion::UsageError("--purity must be global, local or none, got '" + settings.purity +
                              "'");
  }
  return settings;
}

// A process group over TCP: rank 0 hosts the TCPStore every rank meets at. Gloo for CPU
// tensors, NCCL for CUDA tensors (--device=cuda).
c10::intrusive_ptr<c10d::ProcessGroup> make_group(const RankSettings& settings, bool cuda) {
  const auto timeout = std::chrono::milliseconds(1000LL * settings.timeout_seconds);
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<uint16_t>(settings.master_port);
  store_options.isServer = settings.rank == 0;
  store_options.numWorkers = static_cast<size_t>(settings.world_size);
  store_options.timeout = timeout;
  auto store = c10::make_intrusive<c10d::TCPStore>(settings.master_address, store_options);
  auto group = c10::make_intrusive<c10d::ProcessGroup>(store, settings.rank, settings.world_size);
  if (cuda) {
#if defined(GRADDROP_EXAMPLE_NCCL)
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = timeout;
    auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, settings.rank,
                                                               settings.world_size, options);
    group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, backend);
    group->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
#else
    throw fashion::UsageError("--device=cuda needs a build with NCCL's header (nccl.h)");
#endif
  } else {
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices.push_back(
        c10d::ProcessGroupGloo::createDeviceForHostname(settings.master_address));
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, settings.rank,
                                                               settings.world_size, options);
    group->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, backend);
    group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
  }
  group->setGroupName("multi_fashion");
  return group;
}

// One data-parallel model: the network, its optimiser, and the group its gradients are
// averaged over (null in a single process).
struct Replica {
  std::string method;
  fashion::MultiLeNet model{nullptr};
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  c10::intrusive_ptr<c10d::ProcessGroup> group;

  // Everyone starts from rank 0's parameters.
  void broadcast_parameters() {
    if (!group) return;
    torch::NoGradGuard no_grad;
    for (auto& parameter : model->parameters()) {
      std::vector<at::Tensor> tensors{parameter.data()};
      group->broadcast(tensors)->wait();
    }
  }

  // The mean of the ranks' parameter gradients, with one all-reduce of all of them.
  void average_gradients() {
    if (!group) return;
    std::vector<at::Tensor> grads;
    for (auto& parameter : model->parameters()) grads.push_back(parameter.grad().view({-1}));
    std::vector<at::Tensor> flat{torch::cat(grads)};
    group->allreduce(flat)->wait();
    flat[0].div_(group->getSize());
    int64_t offset = 0;
    for (auto& parameter : model->parameters()) {
      const int64_t count = parameter.numel();
      parameter.grad().view({-1}).copy_(flat[0].narrow(0, offset, count));
      offset += count;
    }
  }

  // One step on this rank's rows of the global batch `index`.
  std::array<at::Tensor, fashion::kTasks> step(const fashion::MultiFashionSet& train,
                                               const at::Tensor& index) {
    const auto losses =
        fashion::task_losses(model, train.images.index_select(0, index),
                             train.labels_first.index_select(0, index),
                             train.labels_second.index_select(0, index));
    optimizer->zero_grad();
    (losses[0] + losses[1]).backward();  // one backward; GradDrop's all-reduce happens inside
    average_gradients();
    optimizer->step();
    return losses;
  }
};

Replica make_replica(const std::string& method, const fashion::DemoSettings& demo,
                     const c10::intrusive_ptr<c10d::ProcessGroup>& group,
                     const fashion::MultiLeNet& initial, const torch::Device& device) {
  Replica replica;
  replica.method = method;
  replica.group = group;
  c10::optional<graddrop::GradDropOptions> options;
  if (method != "none") {
    options = demo.graddrop;
    if (method == "global" && group) options->process_group(group);
  }
  replica.model = fashion::MultiLeNet(demo.canvas, options);
  fashion::copy_parameters(*replica.model, *initial);
  replica.model->to(device);
  replica.broadcast_parameters();
  replica.optimizer = fashion::make_optimizer(demo.optimizer, replica.model, demo.learning_rate);
  return replica;
}

// This rank's slice of the global batch `batch` of `order`.
at::Tensor local_rows(const at::Tensor& order, int64_t batch, int64_t batch_size,
                      const RankSettings& settings) {
  const int64_t pairs = order.size(0);
  const int64_t first = batch * batch_size;
  const int64_t global = std::min(pairs, first + batch_size) - first;
  const int64_t share = (global + settings.world_size - 1) / settings.world_size;
  const int64_t begin = std::min(global, share * settings.rank);
  const int64_t end = std::min(global, begin + share);
  return order.slice(0, first + begin, first + end);
}

int train(const RankSettings& settings, const fashion::DemoSettings& demo,
          const fashion::MultiFashionSet& train_set, const fashion::MultiFashionSet& test_set,
          const c10::intrusive_ptr<c10d::ProcessGroup>& group) {
  const uint64_t seed = demo.seeds.front();
  torch::manual_seed(seed);
  const fashion::MultiLeNet initial(demo.canvas, c10::nullopt);
  auto replica = make_replica(settings.purity, demo, group, initial, train_set.images.device());
  const bool lead = settings.rank == 0;
  double total_seconds = 0;
  std::array<double, fashion::kTasks> accuracy{};
  for (int64_t epoch = 1; epoch <= demo.epochs; ++epoch) {
    const auto order =
        fashion::epoch_order(train_set.size(), seed, epoch).to(train_set.images.device());
    const int64_t batches = (order.size(0) + demo.batch_size - 1) / demo.batch_size;
    replica.model->train();
    const auto start = Clock::now();
    auto loss_sum = torch::zeros({fashion::kTasks}, train_set.images.options().dtype(torch::kFloat));
    for (int64_t batch = 0; batch < batches; ++batch) {
      const auto losses =
          replica.step(train_set, local_rows(order, batch, demo.batch_size, settings));
      torch::NoGradGuard no_grad;
      loss_sum += torch::stack({losses[0].detach(), losses[1].detach()});
    }
    synchronize(train_set);
    const double seconds = seconds_since(start);
    total_seconds += seconds;
    accuracy = fashion::evaluate(replica.model, test_set, 1000);
    if (lead) {
      const auto mean = loss_sum / static_cast<double>(batches);
      std::printf("epoch %lld/%lld  rank 0 loss %.4f %.4f  test acc %6.2f%% %6.2f%%  train %.2fs\n",
                  static_cast<long long>(epoch), static_cast<long long>(demo.epochs),
                  mean[0].item<double>(), mean[1].item<double>(), 100.0 * accuracy[0],
                  100.0 * accuracy[1], seconds);
      std::fflush(stdout);
    }
  }
  if (lead) {
    std::printf("summary: ranks %d, purity %s, global batch %lld: test acc %.2f%% %.2f%%, "
                "%.2f s per epoch\n",
                settings.world_size, settings.purity.c_str(),
                static_cast<long long>(demo.batch_size), 100.0 * accuracy[0], 100.0 * accuracy[1],
                total_seconds / static_cast<double>(demo.epochs));
  }
  return 0;
}

// Step time of equal weights, local and global purity, in interleaved rounds on the same
// batches, with every rank in step (a barrier before each timed stretch).
int compare_step_time(const RankSettings& settings, const fashion::DemoSettings& demo,
                      const fashion::MultiFashionSet& train_set,
                      const c10::intrusive_ptr<c10d::ProcessGroup>& group) {
  torch::manual_seed(demo.seeds.front());
  const fashion::MultiLeNet initial(demo.canvas, c10::nullopt);
  std::vector<Replica> replicas;
  for (const std::string method : {"none", "local", "global"}) {
    replicas.push_back(make_replica(method, demo, group, initial, train_set.images.device()));
  }
  const auto order = fashion::epoch_order(train_set.size(), demo.seeds.front(), 1)
                         .to(train_set.images.device());
  const int64_t batches = order.size(0) / demo.batch_size;
  std::vector<std::vector<double>> step_ms(replicas.size());
  int64_t batch = 0;
  for (int64_t round = 0; round <= demo.timing_rounds; ++round) {  // round 0 warms up
    for (size_t turn = 0; turn < replicas.size(); ++turn) {
      auto& replica = replicas[(turn + static_cast<size_t>(round)) % replicas.size()];
      if (group) group->barrier()->wait();
      const auto start = Clock::now();
      for (int64_t step = 0; step < demo.timing_steps; ++step) {
        replica.step(train_set,
                     local_rows(order, (batch + step) % batches, demo.batch_size, settings));
      }
      synchronize(train_set);
      const double ms = 1e3 * seconds_since(start) / static_cast<double>(demo.timing_steps);
      if (round > 0) step_ms[(turn + static_cast<size_t>(round)) % replicas.size()].push_back(ms);
    }
    batch += demo.timing_steps;
  }
  // For scale: a bare all-reduce of the bytes GradDrop's global purity sends per step (the
  // column sums and 41 check values), between the same ranks, as many times.
  double bare_all_reduce_ms = 0;
  if (group) {
    std::vector<at::Tensor> buffer{torch::zeros({fashion::kTasks * fashion::kSharedFeatures + 41},
                                                train_set.images.options().dtype(torch::kFloat))};
    std::vector<double> times;
    for (int64_t round = 0; round <= demo.timing_rounds; ++round) {
      group->barrier()->wait();
      const auto start = Clock::now();
      for (int64_t step = 0; step < demo.timing_steps; ++step) group->allreduce(buffer)->wait();
      if (round > 0) times.push_back(1e3 * seconds_since(start) / demo.timing_steps);
    }
    std::sort(times.begin(), times.end());
    bare_all_reduce_ms = times[times.size() / 2];
  }
  if (settings.rank != 0) return 0;
  auto median = [](std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return values[values.size() / 2];
  };
  const double equal = median(step_ms[0]);
  std::printf("step time: %d ranks, global batch %lld (%lld per rank), median over %lld rounds "
              "of %lld steps (forward, one backward, gradient all-reduce, %s step)\n",
              settings.world_size, static_cast<long long>(demo.batch_size),
              static_cast<long long>(demo.batch_size / settings.world_size),
              static_cast<long long>(demo.timing_rounds),
              static_cast<long long>(demo.timing_steps), demo.optimizer.c_str());
  const char* names[] = {"equal weights (no GradDrop)", "GradDrop, local purity",
                         "GradDrop, global purity"};
  for (size_t r = 0; r < replicas.size(); ++r) {
    const double ms = median(step_ms[r]);
    std::printf("  %-30s %8.3f ms  %.3fx equal weights\n", names[r], ms, ms / equal);
  }
  std::printf("global / local purity: %.3fx (+%.3f ms); a bare all-reduce of the same bytes "
              "between these ranks: %.3f ms\n",
              median(step_ms[2]) / median(step_ms[1]), median(step_ms[2]) - median(step_ms[1]),
              bare_all_reduce_ms);
  int64_t parameter_count = 0;
  for (const auto& parameter : replicas[0].model->parameters()) {
    parameter_count += parameter.numel();
  }
  // GradDrop's collective per step (after the first): one all-reduce of the [tasks, features]
  // float32 column sums and 41 check values (src/distributed/group_call.h).
  const int64_t sums_bytes = fashion::kTasks * fashion::kSharedFeatures * 4;
  const int64_t check_bytes = 41 * 4;
  std::printf("bytes all-reduced per step: parameter gradients %lld; GradDrop's global purity "
              "%lld (column sums %lld + checks %lld) = %.2f%% of it\n",
              static_cast<long long>(parameter_count * 4),
              static_cast<long long>(sums_bytes + check_bytes), static_cast<long long>(sums_bytes),
              static_cast<long long>(check_bytes),
              100.0 * static_cast<double>(sums_bytes + check_bytes) /
                  static_cast<double>(parameter_count * 4));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string program = std::filesystem::path(argv[0]).filename().string();
  std::vector<std::string> arguments(argv + 1, argv + argc);
  RankSettings settings;
  fashion::DemoSettings demo;
  try {
    if (std::find(arguments.begin(), arguments.end(), "--help") != arguments.end()) {
      std::cout << usage(program);
      return 0;
    }
    settings = take_rank_flags(arguments);
    demo = fashion::parse_command_line(arguments);
    if (demo.device == "cuda" && !torch::cuda::is_available()) {
      throw fashion::UsageError("--device=cuda, but CUDA is not available");
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s: %s\nRun %s --help for the flags.\n", program.c_str(), error.what(),
                 program.c_str());
    return 2;
  }
  at::set_num_threads(demo.threads);
  try {
    const auto start = Clock::now();
    const bool cuda = demo.device == "cuda";
    torch::Device device(torch::kCPU);
    if (cuda) {
      const int gpu = settings.rank % static_cast<int>(torch::cuda::device_count());
#if defined(GRADDROP_EXAMPLE_NCCL)
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(gpu));
#endif
      device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(gpu));
    }
    c10::intrusive_ptr<c10d::ProcessGroup> group;
    if (settings.world_size > 1) group = make_group(settings, cuda);
    const std::string directory =
        demo.data_dir.empty() ? fashion::kDefaultDataDirectory : demo.data_dir;
    const auto train_set = fashion::to_device(
        fashion::make_multi_fashion(fashion::load_fashion_split(directory, "train"),
                                    demo.train_size, demo.pair_seed, demo.canvas),
        device);
    const auto test_set = fashion::to_device(
        fashion::make_multi_fashion(fashion::load_fashion_split(directory, "t10k"),
                                    demo.test_size, demo.pair_seed + 1, demo.canvas),
        device);
    if (settings.rank == 0) {
      std::printf("distributed_fashion: LibTorch %s, %d rank(s) (%s), purity %s, %d thread(s) "
                  "per rank, data ready in %.1fs\n",
                  TORCH_VERSION, settings.world_size,
                  settings.world_size == 1 ? "no group" : cuda ? "NCCL, one GPU each" : "Gloo",
                  settings.purity.c_str(), at::get_num_threads(), seconds_since(start));
    }
    if (settings.compare_step_time) {
      return compare_step_time(settings, demo, train_set, group);
    }
    return train(settings, demo, train_set, test_set, group);
  } catch (const fashion::DatasetError& error) {
    std::fprintf(stderr, "%s (rank %d): %s\n", program.c_str(), settings.rank, error.what());
  } catch (const c10::Error& error) {
    std::fprintf(stderr, "%s (rank %d): %s\n", program.c_str(), settings.rank,
                 error.what_without_backtrace());
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s (rank %d): %s\n", program.c_str(), settings.rank, error.what());
  }
  return 1;
}
