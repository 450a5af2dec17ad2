// combine and the layer called from many threads at once: the results do not depend on what
// the other threads do (explicit seeds give the serial goldens bit for bit; the shared default
// generator hands every call its own draw) and separate layers train side by side as they do
// alone.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "graddrop/graddrop.h"
#include "test_support.h"

namespace graddrop {
namespace {

constexpr int kThreads = 8;

// Runs body(thread) on kThreads threads released together, and joins them. A c10::Error on a
// thread is recorded and reported here (gtest assertions are not used off the main thread).
template <typename Body>
std::vector<std::string> run_together(const Body& body) {
  std::atomic<int> ready{0};
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> threads;
  for (int thread = 0; thread < kThreads; ++thread) {
    threads.emplace_back([&, thread] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) std::this_thread::yield();
      try {
        body(thread);
      } catch (const std::exception& error) {
        errors[static_cast<size_t>(thread)] = error.what();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  std::vector<std::string> failures;
  for (const auto& error : errors) {
    if (!error.empty()) failures.push_back(error);
  }
  return failures;
}

struct Job {
  at::Tensor activation;
  std::vector<at::Tensor> grads;
  GradDropOptions options;
};

// Jobs of both modes, with shapes small (serial kernel) and large enough for the kernel's own
// parallel_for, so intra-op threads run inside the caller threads.
std::vector<Job> make_jobs(at::Generator& generator) {
  std::vector<Job> jobs;
  const std::vector<std::vector<int64_t>> shapes = {{16, 40}, {64, 700}, {3, 12000}};
  for (size_t index = 0; index < 12; ++index) {
    const auto& shape = shapes[index % shapes.size()];
    const int64_t n = 1 + static_cast<int64_t>(index % 4);
    Job job;
    job.activation = testing::random_activation(shape, index % 2 ? at::kFloat : at::kBFloat16,
                                                generator);
    job.grads = testing::random_grads(job.activation, n, generator);
    job.options = GradDropOptions(n)
                      .marginalize_batch(index % 3 != 2)
                      .keep_grad_norm(index % 5 == 0)
                      .seed(1000 + index)
                      .offset(index);
    jobs.push_back(job);
  }
  return jobs;
}

TEST(Concurrency, ExplicitSeedsGiveTheSerialBitsOnEightThreads) {
  auto generator = testing::seeded_generator(1201);
  const auto jobs = make_jobs(generator);
  std::vector<at::Tensor> goldens;
  for (const auto& job : jobs) goldens.push_back(combine(job.grads, job.activation, job.options));

  constexpr int kRounds = 3;
  std::vector<std::vector<at::Tensor>> results(kThreads);
  const auto failures = run_together([&](int thread) {
    for (int round = 0; round < kRounds; ++round) {
      for (size_t k = 0; k < jobs.size(); ++k) {
        // Each thread walks the jobs from its own starting point.
        const auto& job = jobs[(k + static_cast<size_t>(thread)) % jobs.size()];
        results[static_cast<size_t>(thread)].push_back(
            combine(job.grads, job.activation, job.options));
      }
    }
  });
  ASSERT_TRUE(failures.empty()) << failures.front();
  for (int thread = 0; thread < kThreads; ++thread) {
    const auto& mine = results[static_cast<size_t>(thread)];
    ASSERT_EQ(mine.size(), kRounds * jobs.size());
    for (size_t call = 0; call < mine.size(); ++call) {
      const size_t job = (call % jobs.size() + static_cast<size_t>(thread)) % jobs.size();
      EXPECT_TRUE(testing::bitwise_equal(mine[call], goldens[job]))
          << "thread " << thread << " call " << call << " (job " << job << ")";
    }
  }
}

// Every element's output tells whether U < P there (task 0 positive, task 1 negative, P spread
// over (0, 1)), so 4096 elements fingerprint the draw: two calls that drew the same U (or the
// same seed) would give the same output.
TEST(Concurrency, DefaultGeneratorGivesEveryCallItsOwnDraw) {
  const int64_t elements = 4096;
  const auto positive = at::linspace(0.01, 1.0, elements, at::kFloat);
  const auto negative = positive.flip(0);
  const auto activation = at::ones({elements}, at::kFloat);
  const std::vector<at::Tensor> grads = {positive, -negative};
  const auto options = GradDropOptions(2).marginalize_batch(false);

  constexpr int kCalls = 25;
  std::vector<std::vector<at::Tensor>> results(kThreads);
  const auto failures = run_together([&](int thread) {
    for (int call = 0; call < kCalls; ++call) {
      results[static_cast<size_t>(thread)].push_back(combine(grads, activation, options));
    }
  });
  ASSERT_TRUE(failures.empty()) << failures.front();
  std::vector<std::string> fingerprints;
  for (const auto& mine : results) {
    for (const auto& out : mine) {
      fingerprints.emplace_back(static_cast<const char*>(out.data_ptr()),
                                static_cast<size_t>(out.numel()) * out.element_size());
    }
  }
  ASSERT_EQ(fingerprints.size(), static_cast<size_t>(kThreads * kCalls));
  std::sort(fingerprints.begin(), fingerprints.end());
  EXPECT_EQ(std::adjacent_find(fingerprints.begin(), fingerprints.end()), fingerprints.end())
      << "two calls drew the same U";
}

// A small multitask model per thread, each with its own GradDropLayer (explicit seed), trained
// for a few SGD steps; the parameters must end where the same training run alone ends.
struct TinyModel {
  torch::nn::Linear trunk{6, 16};
  GradDropLayer layer;
  torch::nn::Linear head_a{16, 2};
  torch::nn::Linear head_b{16, 3};

  TinyModel(uint64_t seed, bool statistics)
      : layer(GradDropOptions(2).seed(seed).record_statistics(statistics)) {
    torch::NoGradGuard no_grad;
    auto generator = at::detail::createCPUGenerator(seed);
    for (auto* linear : {&trunk, &head_a, &head_b}) {
      (*linear)->weight.copy_(at::randn((*linear)->weight.sizes(), generator));
      (*linear)->bias.copy_(at::randn((*linear)->bias.sizes(), generator));
    }
  }

  std::vector<at::Tensor> parameters() {
    std::vector<at::Tensor> result;
    for (auto* linear : {&trunk, &head_a, &head_b}) {
      result.push_back((*linear)->weight);
      result.push_back((*linear)->bias);
    }
    return result;
  }

  std::vector<at::Tensor> train(uint64_t seed) {
    auto generator = at::detail::createCPUGenerator(seed + 1);
    torch::optim::SGD optimizer(parameters(), torch::optim::SGDOptions(0.05));
    for (int step = 0; step < 5; ++step) {
      const auto input = at::randn({8, 6}, generator);
      const auto shared = layer(torch::tanh(trunk(input)));
      const auto loss = head_a(shared[0]).pow(2).mean() + (head_b(shared[1]) - 1).pow(2).mean();
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
    }
    std::vector<at::Tensor> result;
    for (const auto& parameter : parameters()) result.push_back(parameter.detach().clone());
    return result;
  }
};

TEST(Concurrency, SeparateLayersTrainAtOnceAsTheyDoAlone) {
  std::vector<std::vector<at::Tensor>> goldens;
  for (int thread = 0; thread < kThreads; ++thread) {
    goldens.push_back(TinyModel(50 + thread, thread % 2 == 1).train(50 + thread));
  }
  std::vector<std::vector<at::Tensor>> trained(kThreads);
  std::vector<char> recorded(kThreads, 0);  // not vector<bool>: threads write neighbours
  const auto failures = run_together([&](int thread) {
    TinyModel model(50 + thread, thread % 2 == 1);
    trained[static_cast<size_t>(thread)] = model.train(50 + thread);
    recorded[static_cast<size_t>(thread)] = model.layer->last_statistics().has_value();
  });
  ASSERT_TRUE(failures.empty()) << failures.front();
  for (int thread = 0; thread < kThreads; ++thread) {
    const auto& mine = trained[static_cast<size_t>(thread)];
    ASSERT_EQ(mine.size(), goldens[static_cast<size_t>(thread)].size());
    for (size_t k = 0; k < mine.size(); ++k) {
      EXPECT_TRUE(testing::bitwise_equal(mine[k], goldens[static_cast<size_t>(thread)][k]))
          << "thread " << thread << " parameter " << k;
    }
    EXPECT_EQ(recorded[static_cast<size_t>(thread)] != 0, thread % 2 == 1) << "thread " << thread;
  }
}

}  // namespace
}  // namespace graddrop
