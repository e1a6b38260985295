// The layer set of a KV spec (layers=<set>/<base>, docs/kv-specs.md): edge=N's general form, what
// an automatic bit allocation writes. Parsing, the canonical form and its round trip, refusals, and
// the layer mapping every backend takes from it (is_edge_layer, local_layer, sizes).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tq/check.h"
#include "tq/kv/kv_size.h"
#include "tq/kv/spec.h"

namespace tq {
namespace {

TEST(KvLayerSet, ParsesAndRoundTrips) {
  const KvSpec s = parse_kv_spec("k3v2:layers=5+0-1+28-29+7/k4v4:sink=4:window=64");
  EXPECT_EQ(s.policy.layer_set, (std::vector<uint32_t>{0, 1, 5, 7, 28, 29}));
  EXPECT_EQ(s.policy.edge_layers, 0u);
  EXPECT_EQ(s.canonical(), "k3v2:layers=0-1+5+7+28-29/k4v4:sink=4:window=64");
  EXPECT_EQ(parse_kv_spec(s.canonical()).canonical(), s.canonical());
  EXPECT_EQ(s.format.canonical(), "k3v2");  // the set is policy, not format
  EXPECT_FALSE(s.policy.empty());
  // Ranges of one layer and duplicates across ranges.
  EXPECT_EQ(parse_kv_spec("k3v2:layers=3-3/fp16").canonical(), "k3v2:layers=3/fp16");
  EXPECT_EQ(parse_kv_spec("k2v2:layers=0+1+2/k4v2:nc").canonical(), "k2v2:nc:layers=0-2/k4v2");
  EXPECT_EQ(parse_kv_spec("fp16:layers=4/k3v8").canonical(), "fp16:layers=4/k3v8");
  EXPECT_EQ(parse_kv_spec("k3v2:layers=1/k2.5v2").canonical(), "k3v2:layers=1/k2.5v2");
  EXPECT_NO_THROW(parse_kv_spec("k3v2:layers=1/k2.5v2:outliers=fixed"));
}

TEST(KvLayerSet, RefusesWithTheBadPart) {
  const auto msg = [](const std::string& spec) {
    try {
      parse_kv_spec(spec);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_NE(msg("k3v2:layers=0+1").find("layers needs <set>/<base>"), std::string::npos) << msg("k3v2:layers=0+1");
  EXPECT_NE(msg("k3v2:layers=/k4v4").find("layers needs <set>/<base>"), std::string::npos);
  EXPECT_NE(msg("k3v2:layers=0+x/k4v4").find("got 'x'"), std::string::npos);
  EXPECT_NE(msg("k3v2:layers=5-2/k4v4").find("'5-2' runs backwards"), std::string::npos);
  for (const char* item : {"-1", "2-", "1-2-3", "-"})
    EXPECT_NE(msg(fmt::format("k3v2:layers={}/k4v4", item)).find(fmt::format("item '{}' is neither", item)), std::string::npos) << item;
  EXPECT_NE(msg("k3v2:layers=1+0-2/k4v4").find("names layer 1 twice"), std::string::npos);
  {  // refused as the duplicate comes, not after expanding every range (a long spec of repeated ranges took GBs)
    std::string many = "k3v2:layers=0-1023";
    for (int i = 0; i < 20000; ++i) many += "+0-1023";
    EXPECT_NE(msg(many + "/k4v4").find("names layer 0 twice"), std::string::npos);
  }
  EXPECT_NE(msg("k3v2:layers=1024/k4v4").find("layer 1024"), std::string::npos);
  EXPECT_NE(msg("k3v2:layers=1/k9v4").find("K width must be 1..8 bits, got 9"), std::string::npos);
  EXPECT_NE(msg("k3v2:edge=2/k4v4:layers=1/k4v4").find("edge= and layers="), std::string::npos);
  EXPECT_NE(msg("k3v2:layers=1/k4v4:edge=2/k4v4").find("edge= and layers="), std::string::npos);
  EXPECT_THROW(parse_kv_spec("k3v2:layers=0,1/k4v4"), Error);  // a comma separates list entries: never part of a set
  EXPECT_NE(msg("auto:bits=3").find("resolved against a model"), std::string::npos) << msg("auto:bits=3");
  // A set naming a layer the model lacks is refused where the model is known.
  const KvSpec s = parse_kv_spec("k3v2:layers=0+5/k4v4");
  EXPECT_NO_THROW(s.edge_layer_count(6));
  try {
    s.edge_layer_count(5);
    FAIL() << "layer 5 of a 5-layer model accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("names layer 5, but the model has 5 layers (0..4)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(s.local_layer(0, 5), Error);
}

// Each layer's format, and its index in the edge or the main cache (both over the same page ids).
TEST(KvLayerSet, MapsLayersToTheirCache) {
  const KvSpec s = parse_kv_spec("k3v2:nc:layers=1+3-4+9/k4v4");
  const uint32_t L = 10;
  EXPECT_EQ(s.edge_layer_count(L), 4u);
  uint32_t edge = 0, main = 0;
  for (uint32_t l = 0; l < L; ++l) {
    const bool e = l == 1 || l == 3 || l == 4 || l == 9;
    EXPECT_EQ(s.is_edge_layer(l, L), e) << l;
    EXPECT_EQ(s.layer_format(l, L).canonical(), e ? "k4v4:nc" : "k3v2:nc") << l;
    EXPECT_EQ(s.local_layer(l, L), e ? edge++ : main++) << l;  // each cache's layers in model order
  }
  EXPECT_EQ(s.edge_format().canonical(), "k4v4:nc");
  EXPECT_EQ(s.main_format().canonical(), "k3v2:nc");
  // edge=N and the set of the same layers are one layout.
  const KvSpec a = parse_kv_spec("k3v2:edge=2/k4v4"), b = parse_kv_spec("k3v2:layers=0-1+8-9/k4v4");
  for (uint32_t l = 0; l < L; ++l) {
    EXPECT_EQ(a.is_edge_layer(l, L), b.is_edge_layer(l, L)) << l;
    EXPECT_EQ(a.local_layer(l, L), b.local_layer(l, L)) << l;
  }
  EXPECT_EQ(a.page_bytes(L, 3, 64), b.page_bytes(L, 3, 64));
}

// tq kv-size counts each layer of the set in its own format.
TEST(KvLayerSet, SizesFollowTheSet) {
  // SmolLM2's shape: 30 layers, 3 KV heads, head dim 64. k3v2 is 2.75 bits per element there,
  // k4v4 4.25: six k4v4 layers average (24 * 2.75 + 6 * 4.25) / 30 = 3.05.
  const KvSize z = kv_size(parse_kv_spec("k3v2:layers=0-2+10+20+29/k4v4"), 30, 3, 64);
  EXPECT_DOUBLE_EQ(z.bits_per_element, (24 * 2.75 + 6 * 4.25) / 30);
  EXPECT_DOUBLE_EQ(kv_size(parse_kv_spec("k3v2:edge=3/k4v4"), 30, 3, 64).bytes_per_token, z.bytes_per_token);
  EXPECT_DOUBLE_EQ(kv_size(parse_kv_spec("k3v2"), 30, 3, 64).bits_per_element, 2.75);
  // Layers the model does not have are refused, not left out of the count.
  EXPECT_THROW(kv_size(parse_kv_spec("k3v2:layers=0+31/k4v4"), 30, 3, 64), Error);
  // edge=16 on 30 layers: every layer once, at the edge's format.
  EXPECT_DOUBLE_EQ(kv_size(parse_kv_spec("k3v2:edge=16/k4v4"), 30, 3, 64).bits_per_element, kv_size(parse_kv_spec("k4v4"), 30, 3, 64).bits_per_element);
}

// Sliding-window layers in window rings (Gemma-3-270M's shape: 18 layers, every sixth global, a
// window of 512; one KV head of 256): a sequence holds the global layers' pages of every position
// and each local layer's ring (511 + 256 positions at once: 49 pages of 16), where the ring is the
// smaller. Edge layers keep their own format in both counts.
TEST(KvLayerSet, SlidingWindowLayersHoldTheirRings) {
  std::vector<uint32_t> windows(18, 512);
  for (uint32_t l = 5; l < 18; l += 6) windows[l] = 0;
  for (const char* text : {"fp16", "k3v2:edge=1/k4v4"}) {
    const KvSpec s = parse_kv_spec(text);
    const KvSize full = kv_size(s, 18, 1, 256), ringed = kv_size(s, 18, 1, 256, kKvSizeSideExtra, windows);
    EXPECT_EQ(ringed.bytes_per_token, full.bytes_per_token) << text;  // the pool's bytes per position do not change
    EXPECT_EQ(ringed.seq_bytes(512), full.seq_bytes(512)) << text;    // a ring would not be smaller: none
    EXPECT_EQ(ringed.ringed_layers(512), 0u);
    double want = full.side_bytes;
    for (uint32_t l = 0; l < 18; ++l) want += double(windows[l] ? 49 : 2048) * double(s.layer_page_bytes(l, 18, 1, 256));
    EXPECT_EQ(ringed.seq_bytes(32768), want) << text;
    EXPECT_EQ(ringed.ringed_layers(32768), 15u);
    EXPECT_LT(ringed.seq_bytes(32768), full.seq_bytes(32768) / 4) << text;
  }
  EXPECT_THROW(kv_size(parse_kv_spec("fp16"), 18, 1, 256, kKvSizeSideExtra, std::vector<uint32_t>(17, 0)), Error);
}

}  // namespace
}  // namespace tq
