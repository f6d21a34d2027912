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

TEST(Printable, EscapesTerminalControlsAndKeepsOtherUtf8) {
  EXPECT_EQ(printable("warm \xc3\xa9t\xc3\xa9 \xe2\x82\xac 22"), "warm \xc3\xa9t\xc3\xa9 \xe2\x82\xac 22");
  EXPECT_EQ(printable("\x1b]0;PWNED\x07\x1b[2J"), "\\x1b]0;PWNED\\x07\\x1b[2J");
  EXPECT_EQ(printable(std::string("a\nb\0c\x7f", 6)), "a\\x0ab\\x00c\\x7f");
  EXPECT_EQ(printable("\xc2\x9b" "31m \xc2\x80 \xc2\xa0"), "\\u009b31m \\u0080 \xc2\xa0");  // C1 escaped, NBSP kept
  EXPECT_EQ(printable("\xff\xc3"), "\\xff\\xc3");  // not UTF-8
  EXPECT_EQ(printable("back\\slash"), "back\\\\slash");
  for (int b = 0; b < 256; ++b) {
    for (const char c : printable(std::string(1, static_cast<char>(b)))) {
      const auto u = static_cast<unsigned char>(c);
      ASSERT_TRUE(u >= 0x20 && u != 0x7f) << "byte " << b;
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

const std::string kFffd = "\xef\xbf\xbd";  // U+FFFD

TEST(ValidUtf8, KeepsValidTextAsItIs) {
  EXPECT_EQ(valid_utf8("kitchen"), "kitchen");
  EXPECT_EQ(valid_utf8(""), "");
  const std::string mixed = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x92\xa1 \xed\x9f\xbf \xf4\x8f\xbf\xbf";  // é € 💡 U+D7FF U+10FFFF
  EXPECT_EQ(valid_utf8(mixed), mixed);
  EXPECT_EQ(valid_utf8(std::string("a\0b", 3)), std::string("a\0b", 3));
}

TEST(ValidUtf8, ReplacesEachByteThatStartsNoWellFormedSequence) {
  EXPECT_EQ(valid_utf8("\xff"), kFffd);
  EXPECT_EQ(valid_utf8("a\x80" "b"), "a" + kFffd + "b");                       // a lone continuation byte
  EXPECT_EQ(valid_utf8("\xc3("), kFffd + "(");                              // a lead byte without its continuation
  EXPECT_EQ(valid_utf8("\xc0\xaf"), kFffd + kFffd);                         // overlong '/'
  EXPECT_EQ(valid_utf8("\xe0\x80\xaf"), kFffd + kFffd + kFffd);            // overlong, three bytes
  EXPECT_EQ(valid_utf8("\xed\xa0\x80"), kFffd + kFffd + kFffd);            // a surrogate (U+D800)
  EXPECT_EQ(valid_utf8("\xf4\x90\x80\x80"), kFffd + kFffd + kFffd + kFffd);  // past U+10FFFF
  EXPECT_EQ(valid_utf8("\xe2\x82"), kFffd + kFffd);                         // cut short at the end
  // Every single byte: what comes out is valid, so a second pass changes nothing.
  for (int b = 0; b < 256; ++b) {
    const std::string once = valid_utf8(std::string(1, static_cast<char>(b)) + "\xe2\x82\xac");
    EXPECT_EQ(valid_utf8(once), once) << "byte " << b;
  }
}

TEST(ValidUtf8, CutsAtACharacterBoundaryWithinTheLimit) {
  EXPECT_EQ(valid_utf8("abcdef", 3), "abc");
  EXPECT_EQ(valid_utf8(std::string(1023, 'a') + "\xc3\xa9", 1024), std::string(1023, 'a'));
  EXPECT_EQ(valid_utf8(std::string(1022, 'a') + "\xc3\xa9", 1024), std::string(1022, 'a') + "\xc3\xa9");
  EXPECT_EQ(valid_utf8("ab\xff", 4), "ab");  // the replacement is 3 bytes: it does not fit either
  EXPECT_EQ(valid_utf8("ab\xff", 5), "ab" + kFffd);
}

}  // namespace
}  // namespace floe::ipc
