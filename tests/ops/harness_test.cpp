// The comparison itself: what it accepts and what it must reject.
#include <cmath>

#include "ops/harness.h"

namespace philora::optest {
namespace {

Expect two_rows() { return Expect{"y", 3, {1.0, -2.0, 3.0, 0.5, 0.25, -1.0}}; }

TEST(OpHarness, AcceptsWithinTolerance) {
  EXPECT_EQ(compare({"y", {1.0f, -2.0f, 3.0f, 0.5f, 0.25f, -1.0f}}, two_rows(), 0.0, "ref"), "");
  EXPECT_EQ(compare({"y", {1.00001f, -2.0f, 3.0f, 0.5f, 0.25f, -1.0f}}, two_rows(), 1e-5, "ref"),
            "");
}

TEST(OpHarness, RejectsErrorAndNamesTheElement) {
  const std::string msg =
      compare({"y", {1.0f, -2.0f, 3.0f, 0.5f, 0.35f, -1.0f}}, two_rows(), 1e-2, "ref");
  EXPECT_NE(msg.find("output 'y' vs ref"), std::string::npos) << msg;
  EXPECT_NE(msg.find("worst row 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[1, 1]"), std::string::npos) << msg;
}

TEST(OpHarness, RejectsOneWrongRowAmongMany) {
  // 10000 rows, the last one unwritten: 1% overall, within a bf16 tolerance; the row check sees it.
  Expect e{"y", 4, std::vector<double>(40000, 1.0)};
  Output out{"y", std::vector<float>(40000, 1.0f)};
  for (int i = 0; i < 4; ++i) out.got[size_t(39996 + i)] = 0.0f;
  Errors errors;
  const std::string msg = compare(out, e, 2e-2, "ref", &errors);
  EXPECT_LT(errors.normalised, 2e-2);
  EXPECT_NE(msg.find("worst row 9999"), std::string::npos) << msg;
}

TEST(OpHarness, RejectsNaNWhereAValueBelongs) {
  const std::string msg =
      compare({"y", {1.0f, NAN, 3.0f, 0.5f, 0.25f, -1.0f}}, two_rows(), 1.0, "ref");
  EXPECT_NE(msg.find("NaN"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[0, 1]"), std::string::npos) << msg;
}

TEST(OpHarness, KeepMeansBitForBitAndFreeIsIgnored) {
  Expect e{"kv", 2, {NAN, 2.0, 7.0, 0.0}, {Role::keep, Role::value, Role::keep, Role::free}};
  EXPECT_EQ(compare({"kv", {NAN, 2.0f, 7.0f, 123.0f}}, e, 0.0, "ref"), "");
  EXPECT_NE(compare({"kv", {1.0f, 2.0f, 7.0f, 0.0f}}, e, 0.0, "ref").find("must leave alone"),
            std::string::npos);
  EXPECT_NE(compare({"kv", {NAN, 2.0f, 7.5f, 0.0f}}, e, 0.0, "ref"), "");
}

TEST(OpHarness, NormalisesInPlaceOpsByTheirOwnPart) {
  // y0 = 100, the op adds 1: an error of 0.01 is 1% of the op's part.
  Expect e{"y", 1, {101.0}, {}, {100.0}};
  EXPECT_NE(compare({"y", {101.01f}}, e, 1e-3, "ref"), "");
  EXPECT_EQ(compare({"y", {101.0f}}, e, 1e-5, "ref"), "");
}

TEST(OpHarness, RejectsAReferenceThatIsNotFinite) {
  // A cpu backend that writes NaN must not make every other backend pass.
  Expect e{"y", 2, {1.0, NAN}};
  EXPECT_NE(compare({"y", {1.0f, 2.0f}}, e, 2e-2, "ref").find("the reference holds 1 NaN"),
            std::string::npos);
}

TEST(OpHarness, RejectsDegenerateAndMisshapenOutputs) {
  EXPECT_NE(
      compare({"y", {0.0f, 0.0f}}, Expect{"y", 2, {0.0, 0.0}}, 1e-5, "ref").find("degenerate"),
      std::string::npos);
  EXPECT_NE(compare({"y", {1.0f}}, two_rows(), 1e-5, "ref").find("elements"), std::string::npos);
}

}  // namespace
}  // namespace philora::optest
