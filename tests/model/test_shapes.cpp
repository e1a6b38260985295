// The named real shapes (tq bench's random-weight models): each is a shape the loaders could
// have read, and the Gemma 3 ones carry the very settings a gemma3 GGUF gets (model_gguf.cpp).
#include <gtest/gtest.h>

#include <cmath>

#include "tiny_models.h"
#include "tq/model/shapes.h"

namespace tq::model {
namespace {

TEST(NamedShapes, EveryShapeIsConsistent) {
  for (const std::string& name : named_shapes()) {
    SCOPED_TRACE(name);
    const ModelConfig c = named_shape(name);
    EXPECT_GT(c.n_layers, 0);
    EXPECT_EQ(c.n_heads % c.n_kv_heads, 0);
    EXPECT_EQ(c.rope_dim, c.head_dim);
    EXPECT_GT(weight_bytes_bf16(c), size_t(c.vocab_size) * size_t(c.dim) * 2);
    EXPECT_EQ(c.arch == Arch::Gemma3, c.sliding_window > 0) << "every Gemma 3 shape has sliding-window layers, no other";
  }
  EXPECT_THROW(named_shape("gemma-3-13b"), Error);
}

// Each Gemma 3 shape against a gemma3 GGUF of small dims written with the shape's window and RoPE
// scaling: every setting the loader derives from the architecture is the shape's too, and the
// ones it derives from the dims follow the same formulas.
TEST(NamedShapes, Gemma3ShapesCarryTheLoadersSettings) {
  for (const char* name : {"gemma-3-270m", "gemma-3-12b"}) {
    SCOPED_TRACE(name);
    const ModelConfig n = named_shape(name);
    testing::TinyModelSpec s;
    s.arch = "gemma3";
    s.dim = 64, s.n_heads = 4, s.n_kv_heads = 1, s.head_dim = 32, s.hidden = 96, s.n_layers = 12, s.vocab = 40;
    s.sliding_window = n.sliding_window;
    if (n.rope_freq_scale != 1.0f) s.rope_scaling = "linear";  // the writer's factor is 8, the 12B's
    const ModelConfig g = testing::load_written(testing::tiny_model(s)).config;
    EXPECT_EQ(n.arch, g.arch);
    EXPECT_EQ(n.qk_norm, g.qk_norm);
    EXPECT_EQ(n.post_norms, g.post_norms);
    EXPECT_EQ(n.ffn_act, g.ffn_act);
    EXPECT_EQ(n.rope_style, g.rope_style);
    EXPECT_EQ(n.sliding_window, g.sliding_window);
    EXPECT_EQ(n.swa_pattern, g.swa_pattern);
    EXPECT_EQ(n.rope_theta_local, g.rope_theta_local);
    EXPECT_EQ(n.rope_freq_scale, g.rope_freq_scale);
    for (int l = 0; l < n.n_layers; ++l) EXPECT_EQ(n.layer_is_local(l), l % 6 != 5) << "layer " << l;
    EXPECT_FLOAT_EQ(n.embed_scale, std::sqrt(float(n.dim)));
    EXPECT_FLOAT_EQ(g.embed_scale, std::sqrt(float(g.dim)));
    EXPECT_FLOAT_EQ(n.attn_scale, 1.0f / std::sqrt(float(n.head_dim)));
    EXPECT_FLOAT_EQ(g.attn_scale, 1.0f / std::sqrt(float(g.head_dim)));
    ModelConfig without = n;  // the post-norms' fp32 weights are counted: two [dim] vectors a layer
    without.post_norms = false;
    EXPECT_EQ(weight_bytes_bf16(n) - weight_bytes_bf16(without), size_t(n.n_layers) * 2 * size_t(n.dim) * 4);
  }
}

}  // namespace
}  // namespace tq::model
