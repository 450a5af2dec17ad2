// Data-parallel GradDrop (GradDropOptions::process_group): 2 and 3 ranks of a Gloo group over
// loopback, one thread per rank. Checked against the float64 reference on the concatenated
// (global) batch: the operator's output rows, its statistics, and the trunk's gradients of a
// whole data-parallel step; plus unequal and empty local batches, per-element mode (local), and
// the failures that must not hang (a mismatched shape, a rank that never joins).
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "gloo_ranks.h"
#include "graddrop/graddrop.h"
#include "ops/combine_op.h"
#include "test_support.h"

namespace graddrop {
namespace {

using testing::RankContext;

// A global batch and the rows each rank holds (consecutive slices, in rank order).
struct GlobalBatch {
  at::Tensor activation;
  std::vector<at::Tensor> grads;
  std::vector<int64_t> rank_rows;

  int64_t first_row(int rank) const {
    int64_t first = 0;
    for (int r = 0; r < rank; ++r) first += rank_rows[static_cast<size_t>(r)];
    return first;
  }
  at::Tensor rows_of(const at::Tensor& tensor, int rank) const {
    return tensor.narrow(0, first_row(rank), rank_rows[static_cast<size_t>(rank)]).contiguous();
  }
  std::vector<at::Tensor> local_grads(int rank) const {
    std::vector<at::Tensor> local;
    for (const auto& grad : grads) local.push_back(rows_of(grad, rank));
    return local;
  }
};

GlobalBatch make_batch(std::vector<int64_t> rank_rows, std::vector<int64_t> features,
                       int64_t num_tasks, at::ScalarType dtype, at::Generator& generator) {
  GlobalBatch batch;
  batch.rank_rows = std::move(rank_rows);
  int64_t rows = 0;
  for (auto r : batch.rank_rows) rows += r;
  std::vector<int64_t> sizes{rows};
  sizes.insert(sizes.end(), features.begin(), features.end());
  batch.activation = testing::random_activation(sizes, dtype, generator);
  batch.grads = testing::random_grads(batch.activation, num_tasks, generator);
  return batch;
}

double max_difference(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0) return 0.0;
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// Rank 0 uses seed `seed`; every other rank a different one, which must not matter.
uint64_t seed_of_rank(uint64_t seed, int rank) { return rank == 0 ? seed : seed + 1000 + rank; }

// Every rank combines its own rows of `batch` with `base`, its own seed (seed_of_rank) and, when
// `in_group`, the group; returns the outputs (and, if asked, the statistics) by rank.
std::vector<at::Tensor> combine_on_ranks(const GlobalBatch& batch, const GradDropOptions& base,
                                         uint64_t seed, bool in_group,
                                         std::vector<GradDropStatistics>* statistics = nullptr) {
  const int size = static_cast<int>(batch.rank_rows.size());
  std::vector<at::Tensor> outputs(static_cast<size_t>(size));
  if (statistics != nullptr) statistics->assign(static_cast<size_t>(size), {});
  testing::run_ranks(size, [&](const RankContext& context) {
    const auto rank = static_cast<size_t>(context.rank);
    auto options = base;
    options.seed(seed_of_rank(seed, context.rank));
    if (in_group) options.process_group(context.group);
    outputs[rank] = combine(batch.local_grads(context.rank),
                            batch.rows_of(batch.activation, context.rank), options, nullopt,
                            nullopt, statistics != nullptr ? &(*statistics)[rank] : nullptr);
  });
  return outputs;
}

struct OptionsCase {
  const char* name;
  GradDropOptions options;
};

std::vector<OptionsCase> marginalised_cases(int64_t num_tasks) {
  std::vector<OptionsCase> cases;
  cases.push_back({"defaults", GradDropOptions(num_tasks)});
  std::vector<double> leak(static_cast<size_t>(num_tasks), 0.0);
  leak.back() = 0.25;
  cases.push_back({"sigmoid, leak, zero_sign keep, keep_grad_norm",
                   GradDropOptions(num_tasks)
                       .keep_function(KeepFunction::kSigmoid)
                       .scale(1.5)
                       .leak(leak)
                       .zero_sign(ZeroSign::kKeep)
                       .keep_grad_norm(true)});
  cases.push_back({"activation value",
                   GradDropOptions(num_tasks).sign_source(SignSource::kActivationValue)});
  return cases;
}

// Every rank calls combine on its rows; each output must equal its rows of the float64
// reference on the global batch with rank 0's draw, and every rank's statistics must equal the
// reference's.
void expect_global_result(const GlobalBatch& batch, const GradDropOptions& base,
                          const std::string& label) {
  const int size = static_cast<int>(batch.rank_rows.size());
  const uint64_t seed = testing::test_seed() ^ 0x5eedu;
  std::vector<GradDropStatistics> statistics;
  const auto outputs = combine_on_ranks(batch, base, seed, /*in_group=*/true, &statistics);
  const auto uniform =
      testing::philox_uniform_tensor(purity_shape(batch.activation, base), seed, 0);
  const auto expected = reference::combine(batch.grads, batch.activation, base, uniform);
  const auto expected_statistics = testing::statistics_of_reference(expected);
  const double scale = 1.0 + expected.output.abs().max().item<double>();
  for (int rank = 0; rank < size; ++rank) {
    SCOPED_TRACE(label + ", rank " + std::to_string(rank) + " of " + std::to_string(size));
    const auto& output = outputs[static_cast<size_t>(rank)];
    ASSERT_EQ(output.sizes(), batch.rows_of(batch.activation, rank).sizes());
    const auto tolerance =
        batch.activation.scalar_type() == at::kDouble ? 1e-12 : 1e-5;
    EXPECT_LE(max_difference(output, batch.rows_of(expected.output, rank)), tolerance * scale);
    EXPECT_TRUE(testing::statistics_equal(statistics[static_cast<size_t>(rank)],
                                          expected_statistics, 1e-6));
  }
}

class GlobalPurity : public ::testing::TestWithParam<int> {};

TEST_P(GlobalPurity, OperatorEqualsTheFloat64ReferenceOnTheGlobalBatch) {
  const int size = GetParam();
  auto generator = testing::seeded_generator(100 + size);
  for (const int64_t num_tasks : {2, 3}) {
    for (const auto& c : marginalised_cases(num_tasks)) {
      std::vector<int64_t> rows;
      for (int rank = 0; rank < size; ++rank) rows.push_back(3 + rank);
      const auto batch = make_batch(rows, {4, 5}, num_tasks, at::kDouble, generator);
      expect_global_result(batch, c.options, std::string(c.name) + ", n " +
                                                 std::to_string(num_tasks));
    }
  }
}

TEST_P(GlobalPurity, Float32AndBFloat16FollowTheGlobalBatch) {
  const int size = GetParam();
  auto generator = testing::seeded_generator(200 + size);
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    std::vector<int64_t> rows(static_cast<size_t>(size), 16);
    const auto batch = make_batch(rows, {64}, 2, dtype, generator);
    const auto options = GradDropOptions(2);
    const uint64_t seed = testing::test_seed() ^ 0xb16u;
    const auto outputs = combine_on_ranks(batch, options, seed, /*in_group=*/true);
    // Against one process's kernel on the global batch, in the same op-math: only the order
    // of the column sums differs (local sums, then across ranks), so every mask agrees unless
    // U lies within rounding of f(P) (the float64 reference would differ there already).
    auto single = options;
    single.seed(seed);
    const auto expected = combine(batch.grads, batch.activation, single);
    for (int rank = 0; rank < size; ++rank) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + ", rank " + std::to_string(rank));
      EXPECT_TRUE(testing::close_to_reference(outputs[static_cast<size_t>(rank)],
                                              batch.rows_of(expected, rank).to(at::kDouble)));
    }
  }
}

TEST_P(GlobalPurity, UnequalAndEmptyLocalBatchesGiveTheGlobalResult) {
  const int size = GetParam();
  auto generator = testing::seeded_generator(300 + size);
  std::vector<int64_t> rows{5, 0, 2};
  rows.resize(static_cast<size_t>(size));
  for (const auto& c : marginalised_cases(2)) {
    const auto batch = make_batch(rows, {7}, 2, at::kDouble, generator);
    expect_global_result(batch, c.options, std::string("unequal batches, ") + c.name);
  }
}

// A multitask model: Linear trunk + tanh, GradDropLayer, Linear heads. Its loss is a sum over
// samples divided by the global batch, so summed rank gradients are the global gradient.
struct SmallModel : torch::nn::Module {
  torch::nn::Linear trunk{6, 64};
  GradDropLayer graddrop_layer;
  std::vector<torch::nn::Linear> heads;

  SmallModel(const GradDropOptions& options, at::ScalarType dtype)
      : graddrop_layer(options) {
    register_module("trunk", trunk);
    register_module("graddrop", graddrop_layer);
    for (int64_t task = 0; task < options.num_tasks(); ++task) {
      heads.emplace_back(64, 2);
      register_module("head" + std::to_string(task), heads.back());
    }
    to(dtype);
  }

  void copy_parameters_from(SmallModel& other) {
    torch::NoGradGuard no_grad;
    auto mine = parameters();
    auto theirs = other.parameters();
    for (size_t i = 0; i < mine.size(); ++i) mine[i].copy_(theirs[i]);
  }

  at::Tensor loss(const at::Tensor& input, const std::vector<at::Tensor>& targets,
                  int64_t global_batch) {
    const auto shared = graddrop_layer(torch::tanh(trunk(input)));
    auto total = at::zeros({}, input.options());
    for (size_t task = 0; task < heads.size(); ++task) {
      total = total + (heads[task](shared[task]) - targets[task]).pow(2).sum();
    }
    return total / static_cast<double>(global_batch);
  }
};

TEST_P(GlobalPurity, DataParallelStepEqualsOneProcessOnTheConcatenatedBatch) {
  const int size = GetParam();
  for (const auto dtype : {at::kDouble, at::kFloat}) {
    auto generator = testing::seeded_generator(400 + size);
    std::vector<int64_t> rows;
    for (int rank = 0; rank < size; ++rank) rows.push_back(4 + 2 * rank);
    int64_t global = 0;
    for (auto r : rows) global += r;
    const auto data_options = at::TensorOptions().dtype(dtype);
    const auto input = at::randn({global, 6}, generator, data_options);
    std::vector<at::Tensor> targets{at::randn({global, 2}, generator, data_options),
                                    at::randn({global, 2}, generator, data_options)};
    const auto options = GradDropOptions(2);
    const uint64_t draw_seed = testing::test_seed() ^ 0xd7u;

    // One process on the global batch.
    SmallModel single(options, dtype);
    single.graddrop_layer->set_generator(at::make_generator<at::CPUGeneratorImpl>(draw_seed));
    single.loss(input, targets, global).backward();

    std::vector<std::vector<at::Tensor>> rank_grads(static_cast<size_t>(size));
    testing::run_ranks(size, [&](const RankContext& context) {
      auto local_options = options;
      local_options.process_group(context.group);
      SmallModel model(local_options, dtype);
      model.copy_parameters_from(single);
      // Each rank's own generator; only rank 0's draw may count.
      model.graddrop_layer->set_generator(at::make_generator<at::CPUGeneratorImpl>(
          seed_of_rank(draw_seed, context.rank)));
      int64_t first = 0;
      for (int r = 0; r < context.rank; ++r) first += rows[static_cast<size_t>(r)];
      const int64_t count = rows[static_cast<size_t>(context.rank)];
      model.loss(input.narrow(0, first, count),
                 {targets[0].narrow(0, first, count), targets[1].narrow(0, first, count)}, global)
          .backward();
      for (auto& parameter : model.parameters()) {
        auto grad = parameter.grad().contiguous();
        testing::all_reduce_sum(context, grad);
        rank_grads[static_cast<size_t>(context.rank)].push_back(grad);
      }
    });
    const auto expected = single.parameters();
    const double tolerance = dtype == at::kDouble ? 1e-12 : 1e-5;
    for (int rank = 0; rank < size; ++rank) {
      for (size_t p = 0; p < expected.size(); ++p) {
        SCOPED_TRACE(std::string(c10::toString(dtype)) + ", rank " + std::to_string(rank) +
                     ", parameter " + std::to_string(p));
        const auto& grad = rank_grads[static_cast<size_t>(rank)][p];
        const double scale = 1.0 + expected[p].grad().abs().max().item<double>();
        EXPECT_LE(max_difference(grad, expected[p].grad()), tolerance * scale);
      }
    }
  }
}

// Each rank's output equals the float64 reference on its own rows with its own draw.
void expect_local_results(const GlobalBatch& batch, const std::vector<at::Tensor>& outputs,
                          const GradDropOptions& base, uint64_t seed) {
  for (int rank = 0; rank < static_cast<int>(outputs.size()); ++rank) {
    auto options = base;
    options.seed(seed_of_rank(seed, rank));
    const auto activation = batch.rows_of(batch.activation, rank);
    const auto uniform =
        testing::philox_uniform_tensor(purity_shape(activation, options), *options.seed(), 0);
    const auto expected =
        reference::combine(batch.local_grads(rank), activation, options, uniform).output;
    EXPECT_LE(max_difference(outputs[static_cast<size_t>(rank)], expected), 1e-12)
        << "rank " << rank;
  }
}

// Without the group in the options, ranks that happen to run together each compute their own
// batch: the result is the local reference with the rank's own draw.
TEST_P(GlobalPurity, WithoutTheGroupEachRankComputesItsOwnBatch) {
  const int size = GetParam();
  auto generator = testing::seeded_generator(550 + size);
  std::vector<int64_t> rows(static_cast<size_t>(size), 6);
  const auto batch = make_batch(rows, {11}, 2, at::kDouble, generator);
  const uint64_t seed = testing::test_seed() ^ 0x10cu;
  const auto outputs = combine_on_ranks(batch, GradDropOptions(2), seed, /*in_group=*/false);
  expect_local_results(batch, outputs, GradDropOptions(2), seed);
}

TEST_P(GlobalPurity, PerElementModeStaysLocal) {
  const int size = GetParam();
  auto generator = testing::seeded_generator(500 + size);
  std::vector<int64_t> rows(static_cast<size_t>(size), 3);
  const auto batch = make_batch(rows, {9}, 2, at::kDouble, generator);
  const auto options = GradDropOptions(2).marginalize_batch(false);
  const uint64_t seed = testing::test_seed() ^ 0xe1u;
  const auto outputs = combine_on_ranks(batch, options, seed, /*in_group=*/true);
  expect_local_results(batch, outputs, options, seed);
}

TEST_P(GlobalPurity, MismatchedFeatureShapesFailOnEveryRankNamingGroupAndShapes) {
  const int size = GetParam();
  std::vector<std::string> messages(static_cast<size_t>(size));
  testing::run_ranks(size, [&](const RankContext& context) {
    auto options = GradDropOptions(2).process_group(context.group);
    const int64_t features = context.rank == size - 1 ? 6 : 8;
    const auto activation = at::randn({4, features}, at::kDouble);
    try {
      combine({at::randn_like(activation), at::randn_like(activation)}, activation, options);
    } catch (const c10::Error& error) {
      messages[static_cast<size_t>(context.rank)] = error.what_without_backtrace();
    }
  });
  for (int rank = 0; rank < size; ++rank) {
    const auto& message = messages[static_cast<size_t>(rank)];
    SCOPED_TRACE(message);
    EXPECT_NE(message.find("process group '"), std::string::npos);
    EXPECT_NE(message.find("/" + std::to_string(rank) + "'"), std::string::npos);
    EXPECT_NE(message.find("features [8]"), std::string::npos);
    EXPECT_NE(message.find("features [6]"), std::string::npos);
    EXPECT_NE(message.find("shape [4, " + std::to_string(rank == size - 1 ? 6 : 8) + "]"),
              std::string::npos);
  }
}

// After the first call, each call is one all-reduce carrying a hash of the call: a later
// mismatch must still be caught on every rank with both shapes named, and a change of shape made
// by every rank alike must simply work.
TEST_P(GlobalPurity, LaterCallsCheckTheirShapesToo) {
  const int size = GetParam();
  auto generator = testing::seeded_generator(600 + size);
  std::vector<int64_t> rows(static_cast<size_t>(size), 3);
  const auto first = make_batch(rows, {8}, 2, at::kDouble, generator);
  const auto resized = make_batch(rows, {5}, 2, at::kDouble, generator);
  std::vector<std::vector<at::Tensor>> outputs(static_cast<size_t>(size));
  std::vector<std::string> messages(static_cast<size_t>(size));
  const uint64_t seed = testing::test_seed() ^ 0x1a7u;
  testing::run_ranks(size, [&](const RankContext& context) {
    auto options = GradDropOptions(2).process_group(context.group);
    auto& mine = outputs[static_cast<size_t>(context.rank)];
    for (const auto* batch : {&first, &first, &resized, &first}) {
      options.seed(seed_of_rank(seed, context.rank) + mine.size());
      mine.push_back(combine(batch->local_grads(context.rank),
                             batch->rows_of(batch->activation, context.rank), options));
    }
    // Now the last rank alone changes its feature count.
    const int64_t features = context.rank == size - 1 ? 6 : 8;
    const auto activation = at::randn({4, features}, at::kDouble);
    try {
      combine({at::randn_like(activation), at::randn_like(activation)}, activation, options);
    } catch (const c10::Error& error) {
      messages[static_cast<size_t>(context.rank)] = error.what_without_backtrace();
    }
  });
  int call = 0;
  for (const auto* batch : {&first, &first, &resized, &first}) {
    const auto options = GradDropOptions(2);
    const auto uniform = testing::philox_uniform_tensor(purity_shape(batch->activation, options),
                                                        seed + static_cast<uint64_t>(call), 0);
    const auto expected = reference::combine(batch->grads, batch->activation, options, uniform);
    for (int rank = 0; rank < size; ++rank) {
      EXPECT_LE(max_difference(outputs[static_cast<size_t>(rank)][static_cast<size_t>(call)],
                               batch->rows_of(expected.output, rank)),
                1e-12)
          << "call " << call << ", rank " << rank;
    }
    ++call;
  }
  for (int rank = 0; rank < size; ++rank) {
    const auto& message = messages[static_cast<size_t>(rank)];
    SCOPED_TRACE(message);
    EXPECT_NE(message.find("features [8]"), std::string::npos);
    EXPECT_NE(message.find("features [6]"), std::string::npos);
  }
}

TEST(GlobalPurityFailure, ARankThatSkipsTheLayerEndsWithAnErrorWithinTheTimeout) {
  const auto timeout = std::chrono::milliseconds(1500);
  std::string message;
  double waited_seconds = 0;
  testing::run_ranks(
      2,
      [&](const RankContext& context) {
        if (context.rank == 1) {
          // Never calls combine; keeps its end of the group open past rank 0's timeout.
          std::this_thread::sleep_for(timeout * 3);
          return;
        }
        auto options = GradDropOptions(2).process_group(context.group);
        const auto activation = at::randn({4, 8}, at::kFloat);
        const auto start = std::chrono::steady_clock::now();
        try {
          combine({at::randn_like(activation), at::randn_like(activation)}, activation, options);
        } catch (const c10::Error& error) {
          message = error.what_without_backtrace();
        }
        waited_seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      },
      timeout);
  SCOPED_TRACE(message);
  EXPECT_NE(message.find("process group '"), std::string::npos);
  EXPECT_NE(message.find("shape [4, 8]"), std::string::npos);
  EXPECT_NE(message.find("exchanging the call descriptions"), std::string::npos);
  EXPECT_LT(waited_seconds, 30.0);
}

TEST(GlobalPurityFailure, AnUnknownGroupNameIsRefusedByTheOperator) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("graddrop::combine", "")
                       .typed<ops::CombineSignature>();
  const auto activation = at::randn({4, 8});
  c10::List<optional<at::Tensor>> grads;
  grads.push_back(at::randn_like(activation));
  const auto before = activation.clone();
  EXPECT_TRUE(testing::throws_error_containing(
      [&] {
        op.call(activation, grads, {}, "activation_sign", true, "linear", 1.0, "drop", 1e-7,
                false, nullopt, nullopt, nullopt, nullopt, 0, false,
                c10::string_view("no-such-group"));
      },
      {"group_name 'no-such-group'", "registry"}));
  EXPECT_TRUE(at::equal(activation, before));
}

// CUDA tensors (every rank on cuda:0, Gloo): the same protocol with the CUDA kernels' column-sum
// and given-sums phases. The column sums follow the canonical order on both devices, so the
// result equals the CPU's data-parallel result bit for bit (keep_grad_norm: to the last bits),
// and the float64 reference.
class GlobalPurityCuda : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(GlobalPurityCuda, EqualsTheCpuDataParallelResultAndTheReference) {
  const int size = GetParam();
  auto generator = testing::seeded_generator(700 + size);
  for (const auto dtype : {at::kFloat, at::kDouble, at::kBFloat16}) {
    for (const auto& c : marginalised_cases(3)) {
      std::vector<int64_t> rows{700, 0, 45};  // more than one chunk of rows, and an empty rank
      rows.resize(static_cast<size_t>(size));
      const auto batch = make_batch(rows, {37}, 3, dtype, generator);
      const uint64_t seed = testing::test_seed() ^ 0xc0dau;
      std::vector<at::Tensor> on_cpu(static_cast<size_t>(size)), on_gpu(static_cast<size_t>(size));
      std::vector<GradDropStatistics> cpu_statistics(static_cast<size_t>(size)),
          gpu_statistics(static_cast<size_t>(size));
      testing::run_ranks(size, [&](const RankContext& context) {
        auto options = c.options;
        options.process_group(context.group).seed(seed_of_rank(seed, context.rank));
        const auto r = static_cast<size_t>(context.rank);
        const auto activation = batch.rows_of(batch.activation, context.rank);
        const auto grads = batch.local_grads(context.rank);
        on_cpu[r] = combine(grads, activation, options, nullopt, nullopt, &cpu_statistics[r]);
        std::vector<at::Tensor> cuda_grads;
        for (const auto& grad : grads) cuda_grads.push_back(grad.cuda());
        on_gpu[r] = combine(cuda_grads, activation.cuda(), options, nullopt, nullopt,
                            &gpu_statistics[r])
                        .cpu();
      });
      const auto uniform =
          testing::philox_uniform_tensor(purity_shape(batch.activation, c.options), seed, 0);
      const auto expected = reference::combine(batch.grads, batch.activation, c.options, uniform);
      for (int rank = 0; rank < size; ++rank) {
        SCOPED_TRACE(std::string(c.name) + ", " + c10::toString(dtype) + ", rank " +
                     std::to_string(rank));
        const auto r = static_cast<size_t>(rank);
        // keep_grad_norm's norms are sums in a device-specific order (README): last bits only.
        EXPECT_TRUE(c.options.keep_grad_norm()
                        ? testing::close_to_reference(on_gpu[r], on_cpu[r].to(at::kDouble))
                        : testing::bitwise_equal(on_gpu[r], on_cpu[r]));
        EXPECT_TRUE(testing::statistics_equal(gpu_statistics[r], cpu_statistics[r], 1e-9));
        if (dtype == at::kDouble) {
          EXPECT_LE(max_difference(on_gpu[r], batch.rows_of(expected.output, rank)), 1e-12);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, GlobalPurityCuda, ::testing::Values(2, 3),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::to_string(info.param) + "Ranks";
                         });

INSTANTIATE_TEST_SUITE_P(Ranks, GlobalPurity, ::testing::Values(2, 3),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::to_string(info.param) + "Ranks";
                         });

}  // namespace
}  // namespace graddrop
