// The planner: token accounting turned into flat arrays.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "engine/plan.h"
#include "engine/sampler.h"
#include "kv/kv_cache.h"
#include "lora/slots.h"
#include "test_util.h"

namespace philora {
namespace {

TEST(Plan, PagedLayoutKvLocationsAndLogitRows) {
  CpuBackend backend(1);
  kv::KvCache kv(backend, 1, 16, 4, 1, 8);
  engine::Sequence a, b;
  a.id = "a";
  a.tokens = {1, 2, 3, 4, 5, 6};  // 6 tokens, 2 cached already
  a.num_computed = 2;
  a.lora_slot = 0;
  b.id = "b";
  b.tokens = {7, 8, 9};
  b.lora_slot = -1;
  ASSERT_TRUE(kv.pages.reserve(a.pages, 6));
  ASSERT_TRUE(kv.pages.reserve(b.pages, 3));
  ASSERT_EQ(a.pages.ids.size(), 2u);
  ASSERT_EQ(b.pages.ids.size(), 1u);
  auto p = engine::plan_step({{&a, 4, true}, {&b, 3, true}}, 4);
  EXPECT_EQ(p.token_ids, (std::vector<int32_t>{3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(p.positions, (std::vector<int32_t>{2, 3, 4, 5, 0, 1, 2}));
  const int32_t a0 = a.pages.ids[0], a1 = a.pages.ids[1], b0 = b.pages.ids[0];
  EXPECT_EQ(p.kv_locs, (std::vector<int32_t>{a0 * 4 + 2, a0 * 4 + 3, a1 * 4, a1 * 4 + 1, b0 * 4,
                                             b0 * 4 + 1, b0 * 4 + 2}));
  EXPECT_EQ(p.q_indptr, (std::vector<int32_t>{0, 4, 7}));
  EXPECT_EQ(p.kv_indptr, (std::vector<int32_t>{0, 2, 3}));
  EXPECT_EQ(p.kv_indices, (std::vector<int32_t>{a0, a1, b0}));
  EXPECT_EQ(p.kv_last_page_len, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(p.logit_rows, (std::vector<int32_t>{3, 6}));
  EXPECT_EQ(p.logit_lora_slot, (std::vector<int32_t>{0, -1}));
  EXPECT_EQ(p.max_kv_len, 6);
  EXPECT_EQ(p.max_q_len, 4);
  EXPECT_EQ(p.logit_indptr, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_FALSE(p.all_rows);
  EXPECT_FALSE(p.host_logits);
}

// A sequence that wants its prompt logits has every computed row among the
// logit rows (and they come back to the host); one that neither samples nor
// wants them (a prompt chunk) has none.
TEST(Plan, PromptLogitRows) {
  CpuBackend backend(1);
  kv::KvCache kv(backend, 1, 16, 4, 1, 8);
  engine::Sequence a, b, c;
  a.tokens = {1, 2, 3, 4, 5};
  a.num_computed = 1;
  b.tokens = {6, 7, 8};
  c.tokens = {9, 10};
  c.lora_slot = 2;
  for (engine::Sequence* q : {&a, &b, &c}) ASSERT_TRUE(kv.pages.reserve(q->pages, 5));
  auto p = engine::plan_step({{&a, 4, true, true}, {&b, 2, false}, {&c, 2, false, true}}, 4);
  EXPECT_EQ(p.logit_rows, (std::vector<int32_t>{0, 1, 2, 3, 6, 7}));
  EXPECT_EQ(p.logit_indptr, (std::vector<int32_t>{0, 4, 4, 6}));
  EXPECT_EQ(p.logit_lora_slot, (std::vector<int32_t>{-1, -1, -1, -1, 2, 2}));
  EXPECT_FALSE(p.all_rows) << "b's rows need no logits";
  EXPECT_TRUE(p.host_logits);

  auto all = engine::plan_step({{&a, 4, false, true}, {&c, 2, true}}, 4);
  EXPECT_EQ(all.logit_rows, (std::vector<int32_t>{0, 1, 2, 3, 5}));
  EXPECT_FALSE(all.all_rows) << "c's first row needs none";
  auto every = engine::plan_step({{&a, 4, false, true}, {&c, 2, true, true}}, 4);
  EXPECT_TRUE(every.all_rows);
}

TEST(Plan, LoraSegmentsAreRunsOfEqualSlots) {
  std::vector<int32_t> indptr, slots;
  engine::lora_segments({0, 0, -1, 1, 1, 1, 0}, &indptr, &slots);
  EXPECT_EQ(indptr, (std::vector<int32_t>{0, 2, 3, 6, 7}));
  EXPECT_EQ(slots, (std::vector<int32_t>{0, -1, 1, 0}));
  engine::lora_segments({}, &indptr, &slots);
  EXPECT_EQ(indptr, (std::vector<int32_t>{0}));
  EXPECT_TRUE(slots.empty());
}

TEST(Sampler, DrawsAreInTheUnitIntervalAndFollowTheSeed) {
  std::mt19937_64 a(7), b(7);
  for (int i = 0; i < 1000; ++i) {
    const float u = engine::draw_uniform(a);
    EXPECT_GE(u, 0.0f);
    EXPECT_LT(u, 1.0f);
    EXPECT_EQ(u, engine::draw_uniform(b));
  }
}

}  // namespace
}  // namespace philora

namespace philora {
namespace {

// Step graphs bake in the LoRA tables' addresses and what the host decides
// from them (which modules have a table, each table's max rank): the tables
// must stay put, and the layout version must change exactly when a decision does.
TEST(AdapterSlots, TablesStayPutAndTheLayoutVersionTracksHostDecisions) {
  CpuBackend backend(1);
  const model::Phi3Config c = test::tiny_phi3_config();
  lora::AdapterSlots slots(backend, c, 3);
  EXPECT_EQ(slots.table(0, lora::Target::qkv), nullptr) << "no adapter: no table";
  const uint64_t v0 = slots.layout_version();

  slots.assign_random(0, 8, 1.0f, 1);
  const LoraModuleTable* qkv = slots.table(0, lora::Target::qkv);
  ASSERT_NE(qkv, nullptr);
  const void* a_ptrs = qkv->a_ptrs.data;
  const uint64_t v1 = slots.layout_version();
  EXPECT_NE(v1, v0) << "modules gained tables";

  slots.assign_random(1, 8, 0.5f, 2);  // same rank elsewhere: nothing the host decides changes
  EXPECT_EQ(slots.layout_version(), v1);
  EXPECT_EQ(slots.table(0, lora::Target::qkv), qkv);
  EXPECT_EQ(qkv->a_ptrs.data, a_ptrs) << "rewritten in place";
  EXPECT_NE(qkv->a_ptrs.ptr<int64_t>()[1], 0) << "slot 1's A is in the table";

  slots.assign_random(2, 16, 1.0f, 3);  // a larger rank: max_rank changes
  const uint64_t v2 = slots.layout_version();
  EXPECT_NE(v2, v1);
  EXPECT_EQ(qkv->max_rank, 16);
  EXPECT_EQ(qkv->a_ptrs.data, a_ptrs);

  slots.clear(1);  // ranks 8 and 16 remain: no decision changes
  EXPECT_EQ(slots.layout_version(), v2);
  EXPECT_EQ(qkv->ranks.ptr<int32_t>()[1], 0);
  slots.clear(2);
  EXPECT_NE(slots.layout_version(), v2) << "max rank back to 8";
  slots.clear(0);
  EXPECT_EQ(slots.table(0, lora::Target::qkv), nullptr) << "no adapter left: no table";
}

// LoRA columns: first fit, freed on clear and reassign, B placed where the
// table says, the step's width a power of two covering the used ranges, and 0
// when some token's adapter found no room.
TEST(AdapterSlots, LoraColumnsArePlacedFirstFitAndFreed) {
  CpuBackend backend(1);
  const model::Phi3Config c = test::tiny_phi3_config();
  const int64_t layers = c.num_hidden_layers;
  std::vector<Tensor> wide;
  for (int64_t l = 0; l < layers; ++l)
    for (auto [in, out] : {std::pair{c.hidden_size, c.qkv_size()}, {c.q_size(), c.hidden_size},
                           {c.hidden_size, 2 * c.intermediate_size}, {c.intermediate_size, c.hidden_size}}) {
      Tensor w = backend.alloc(DType::f32, {out, in + 40});
      std::fill_n(w.ptr<float>(), w.numel(), 7.0f);  // "W" and stale columns alike
      backend.write_columns(w, in, Tensor(), 40);
      wide.push_back(w);
    }
  lora::AdapterSlots slots(backend, c, 4);
  slots.attach_columns(wide, 40);
  slots.assign_random(0, 8, 1.0f, 1);   // columns 0..8
  slots.assign_random(1, 12, 1.0f, 2);  // 8..24 (12 rounded up to 16)
  slots.assign_random(2, 16, 1.0f, 3);  // 24..40: full
  slots.assign_random(3, 4, 1.0f, 4);   // no room
  const LoraModuleTable* o = slots.table(1, lora::Target::o);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(o->columns, 40);
  const auto* off = o->col_offsets.ptr<int32_t>();
  EXPECT_EQ(off[0], 0);
  EXPECT_EQ(off[1], 8);
  EXPECT_EQ(off[2], 24);
  EXPECT_EQ(off[3], -1);
  EXPECT_EQ(slots.step_columns({0, -1, 0}), 16);
  EXPECT_EQ(slots.step_columns({1}), 32);
  EXPECT_EQ(slots.step_columns({2, 0}), 40) << "capped at the capacity";
  EXPECT_EQ(slots.step_columns({0, 3}), 0) << "slot 3 has no columns: the kernels serve the step";
  EXPECT_EQ(slots.step_columns({-1, -1}), 0);

  // Slot 1's B for layer 1's o_proj is at columns in + 8 .. + 12, zeros up to
  // + 16; the table reads it there (B is kept once), rows ld apart.
  const Tensor& w = wide[size_t(1 * 4 + 1)];
  const int64_t in = c.q_size(), ld = in + 40;
  EXPECT_EQ(reinterpret_cast<const float*>(o->b_ptrs.ptr<int64_t>()[1]), w.ptr<float>() + in + 8);
  EXPECT_EQ(o->b_ld.ptr<int32_t>()[1], ld);
  EXPECT_EQ(o->b_ld.ptr<int32_t>()[3], 4) << "a slot without columns keeps B of its own";
  for (int64_t r = 0; r < w.dim(0); ++r) {
    for (int64_t j = 0; j < 12; ++j) ASSERT_NE(w.ptr<float>()[r * ld + in + 8 + j], 0.0f) << "B placed";
    for (int64_t j = 12; j < 16; ++j) ASSERT_EQ(w.ptr<float>()[r * ld + in + 8 + j], 0.0f);
    ASSERT_EQ(w.ptr<float>()[r * ld], 7.0f) << "W itself untouched";
  }

  slots.clear(1);  // frees 8..24 and zeroes it; slot 3, waiting, takes 8..16 at once
  EXPECT_EQ(o->col_offsets.ptr<int32_t>()[1], -1);
  EXPECT_EQ(o->col_offsets.ptr<int32_t>()[3], 8);
  EXPECT_EQ(reinterpret_cast<const float*>(o->b_ptrs.ptr<int64_t>()[3]), w.ptr<float>() + in + 8);
  EXPECT_EQ(o->b_ld.ptr<int32_t>()[3], ld);
  for (int64_t r = 0; r < w.dim(0); ++r) {
    for (int64_t j = 8; j < 12; ++j) ASSERT_NE(w.ptr<float>()[r * ld + in + j], 0.0f) << "slot 3's B";
    for (int64_t j = 12; j < 24; ++j) ASSERT_EQ(w.ptr<float>()[r * ld + in + j], 0.0f);
  }
  EXPECT_EQ(slots.step_columns({3, 2}), 40);
  slots.assign_random(3, 4, 1.0f, 5);  // reassigned: released, then the first fit again
  EXPECT_EQ(o->col_offsets.ptr<int32_t>()[3], 8);
  EXPECT_THROW(slots.attach_columns(wide, 40), std::logic_error) << "columns come before adapters";
  EXPECT_EQ(slots.step_columns({3, 2}), 40);
}

}  // namespace
}  // namespace philora
