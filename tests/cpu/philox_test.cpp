// Philox-4x32-10 against the known-answer vectors of the Random123 distribution (kat_vectors).
#include <gtest/gtest.h>

#include "detail/philox.h"

namespace graddrop {
namespace {

detail::PhiloxWords words(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  detail::PhiloxWords w;
  w.w[0] = a;
  w.w[1] = b;
  w.w[2] = c;
  w.w[3] = d;
  return w;
}

void expect_words(const detail::PhiloxWords& got, const detail::PhiloxWords& want) {
  for (int i = 0; i < 4; ++i) EXPECT_EQ(got.w[i], want.w[i]) << "word " << i;
}

TEST(Philox, KnownAnswerZero) {
  expect_words(detail::philox4x32_10(words(0, 0, 0, 0), 0, 0),
               words(0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u));
}

TEST(Philox, KnownAnswerOnes) {
  expect_words(detail::philox4x32_10(words(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu),
                                     0xffffffffu, 0xffffffffu),
               words(0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu));
}

TEST(Philox, KnownAnswerPi) {
  expect_words(detail::philox4x32_10(words(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u),
                                     0xa4093822u, 0x299f31d0u),
               words(0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u));
}

TEST(Philox, UniformIsKeyedOnLogicalIndex) {
  const uint64_t seed = 0x1234567890abcdefull, offset = 7;
  for (uint64_t k = 0; k < 64; ++k) {
    const auto group = detail::philox_group(seed, offset, k / 4);
    EXPECT_EQ(detail::philox_uniform(seed, offset, k), detail::uniform_from_word(group.w[k % 4]));
  }
  EXPECT_NE(detail::philox_uniform(seed, offset, 0), detail::philox_uniform(seed, offset + 1, 0));
  EXPECT_NE(detail::philox_uniform(seed, offset, 0), detail::philox_uniform(seed + 1, offset, 0));
}

TEST(Philox, UniformRangeIsHalfOpen) {
  EXPECT_EQ(detail::uniform_from_word(0u), 0.0f);
  EXPECT_LT(detail::uniform_from_word(0xffffffffu), 1.0f);
  EXPECT_EQ(detail::uniform_from_word(0xffffffffu), 1.0f - 1.0f / 16777216.0f);
}

}  // namespace
}  // namespace graddrop
