#include <gtest/gtest.h>

#include <string>

#include "floe/ipc/text.hpp"

namespace floe::ipc {
namespace {

TEST(Excerpt, KeepsPrintableAsciiAsItIs) {
  EXPECT_EQ(excerpt("kitchen.light-2_a"), "kitchen.light-2_a");
  EXPECT_EQ(excerpt(""), "");
  EXPECT_EQ(excerpt("with space ~"), "with space ~");
}

TEST(Excerpt, EscapesEveryOtherByteSoTheResultIsAscii) {
  EXPECT_EQ(excerpt(std::string("a\nb\0c", 5)), "a\\x0ab\\x00c");
  EXPECT_EQ(excerpt("back\\slash"), "back\\\\slash");
  EXPECT_EQ(excerpt("\x7f\x80\xff"), "\\x7f\\x80\\xff");
  EXPECT_EQ(excerpt("caf\xc3\xa9"), "caf\\xc3\\xa9");  // UTF-8 too: cutting it could split a character
  for (int b = 0; b < 256; ++b) {
    for (const char c : excerpt(std::string(1, static_cast<char>(b)))) {
      const auto u = static_cast<unsigned char>(c);
      ASSERT_TRUE(u >= 0x20 && u < 0x7f) << "byte " << b;
    }
  }
}

TEST(Excerpt, CutsLongInputAndSaysHowLongItWas) {
  const std::string big(70'000, 'x');
  const std::string e = excerpt(big);
  EXPECT_EQ(e, std::string(64, 'x') + "...(70000 bytes)");
  EXPECT_EQ(excerpt("abcdef", 3), "abc...(6 bytes)");
  EXPECT_EQ(excerpt("abc", 3), "abc");
}

}  // namespace
}  // namespace floe::ipc
