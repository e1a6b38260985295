// The OpenAI request parser names the field at fault for every wrong value, takes what the
// openai package sends, and the response bodies have the API's shape.
#include <gtest/gtest.h>

#include "tq/serve/openai.h"

namespace tq::serve {
namespace {

using json = nlohmann::json;

TEST(OpenAiParse, CompletionDefaultsAndFields) {
  CompletionRequest r = parse_completion(json{{"model", "m"}, {"prompt", "hi"}}, false);
  EXPECT_EQ(r.prompt, "hi");
  EXPECT_EQ(r.model, "m");
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_EQ(r.sampling.temperature, 1.0f);  // the API's default, not greedy
  EXPECT_FALSE(r.seeded);
  r = parse_completion(json::parse(R"({"prompt": ["one"], "max_tokens": 7, "temperature": 0, "top_p": 0.5, "top_k": -1, "seed": 9,
                                       "stop": "x", "stream": true, "stream_options": {"include_usage": true}, "n": 1,
                                       "logprobs": null, "presence_penalty": 0, "user": "u"})"),
                       false);
  EXPECT_EQ(r.prompt, "one");
  EXPECT_EQ(*r.max_tokens, 7u);
  EXPECT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_EQ(r.sampling.seed, 9u);
  EXPECT_TRUE(r.seeded && r.stream && r.include_usage);
  EXPECT_EQ(r.stop, std::vector<std::string>{"x"});
  // lm-eval's humaneval: the task's five stops and the EOS text (OpenAI's chat would take 4)
  r = parse_completion(json::parse(R"({"prompt": "x", "stop": ["\nclass", "\ndef", "\n#", "\nif", "\nprint", "<|endoftext|>"]})"), false);
  EXPECT_EQ(r.stop.size(), 6u);
  r = parse_completion(json::parse(R"({"prompt": [1, 2, 3]})"), false);
  EXPECT_EQ(r.prompt_ids, (std::vector<int>{1, 2, 3}));
  // A batch of one prompt of token ids (lm-evaluation-harness's form), scored: echo with logprobs
  // and max_tokens 0.
  r = parse_completion(json::parse(R"({"prompt": [[4, 5]], "echo": true, "logprobs": 1, "max_tokens": 0})"), false);
  EXPECT_EQ(r.prompt_ids, (std::vector<int>{4, 5}));
  EXPECT_TRUE(r.echo);
  EXPECT_EQ(r.logprobs, 1);
  EXPECT_EQ(*r.max_tokens, 0u);
  EXPECT_FALSE(r.speculation.has_value());  // the server's default
  r = parse_completion(json::parse(R"({"prompt": "x", "speculative": "ngram:k=4"})"), false);
  ASSERT_TRUE(r.speculation.has_value() && r.speculation->has_value());
  EXPECT_EQ(r.speculation->value().max_draft, 4u);
  r = parse_completion(json::parse(R"({"prompt": "x", "speculative": "off"})"), false);
  EXPECT_TRUE(r.speculation.has_value() && !r.speculation->has_value());
  // A draft-model spec parses; whether the server has a draft model is the scheduler's check.
  r = parse_completion(json::parse(R"({"prompt": "x", "speculative": "draft:k=3"})"), false);
  ASSERT_TRUE(r.speculation.has_value() && r.speculation->has_value());
  EXPECT_EQ(r.speculation->value().source, engine::SpeculativeSpec::Source::kDraftModel);
}

TEST(OpenAiParse, ChatMessages) {
  const CompletionRequest r = parse_completion(json::parse(R"({"messages": [{"role": "developer", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "max_completion_tokens": 3,
      "logprobs": false})"),
                                               true);
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "ab");
  EXPECT_EQ(*r.max_tokens, 3u);
}

struct Bad {
  const char* body;
  bool chat;
  const char* param;  // "" when the body as a whole is wrong
};
class OpenAiRefuses : public ::testing::TestWithParam<Bad> {};
TEST_P(OpenAiRefuses, NamingTheField) {
  const Bad& b = GetParam();
  try {
    parse_completion(json::parse(b.body), b.chat);
    FAIL() << "accepted " << b.body;
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, b.param) << e.what();
    if (*b.param) {
      EXPECT_NE(std::string(e.what()).find(b.param), std::string::npos) << e.what();
    }
  }
}
INSTANTIATE_TEST_SUITE_P(
    Bodies, OpenAiRefuses,
    ::testing::Values(Bad{R"([1])", false, ""}, Bad{R"({})", false, "prompt"}, Bad{R"({"prompt": null})", false, "prompt"},
                      Bad{R"({"prompt": 1})", false, "prompt"}, Bad{R"({"prompt": ["a", "b"]})", false, "prompt"},
                      Bad{R"({"prompt": [1, -2]})", false, "prompt"}, Bad{R"({"prompt": "x", "max_tokens": 1.5})", false, "max_tokens"},
                      Bad{R"({"prompt": "x", "max_tokens": -1})", false, "max_tokens"},
                      Bad{R"({"prompt": "x", "temperature": "hot"})", false, "temperature"},
                      Bad{R"({"prompt": "x", "temperature": 2.5})", false, "temperature"}, Bad{R"({"prompt": "x", "top_p": 0})", false, "top_p"},
                      Bad{R"({"prompt": "x", "min_p": 2})", false, "min_p"}, Bad{R"({"prompt": "x", "seed": "s"})", false, "seed"},
                      Bad{R"({"prompt": "x", "n": 4})", false, "n"}, Bad{R"({"prompt": "x", "best_of": 2})", false, "best_of"},
                      Bad{R"({"prompt": "x", "logprobs": 21})", false, "logprobs"},
                      Bad{R"({"prompt": "x", "logprobs": true})", false, "logprobs"},
                      Bad{R"({"prompt": "x", "max_tokens": 0})", false, "max_tokens"},
                      Bad{R"({"prompt": "x", "prompt_logprobs": 1})", false, "prompt_logprobs"},
                      Bad{R"({"prompt": [[1, 2], [3]]})", false, "prompt"}, Bad{R"({"prompt": [[]]})", false, "prompt"},
                      Bad{R"({"prompt": [[1, "a"]]})", false, "prompt"},
                      Bad{R"({"prompt": "x", "max_tokens": 0, "echo": true})", false, "max_tokens"},
                      Bad{R"({"prompt": "x", "max_tokens": 0, "logprobs": 1})", false, "max_tokens"},
                      Bad{R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0, "logprobs": true})", true, "max_tokens"},
                      Bad{R"({"prompt": "x", "frequency_penalty": 0.5})", false, "frequency_penalty"},
                      Bad{R"({"prompt": "x", "stop": [""]})", false, "stop"}, Bad{R"({"prompt": "x", "stop": 3})", false, "stop"},
                      Bad{R"({"prompt": "x", "stream": 1})", false, "stream"},
                      Bad{R"({"prompt": "x", "stream_options": {"include_usage": true}})", false, "stream_options"},
                      Bad{R"({"prompt": "x", "model": 3})", false, "model"}, Bad{R"({"messages": "hi"})", true, "messages"},
                      Bad{R"({"messages": [{"role": "tool", "content": "x"}]})", true, "messages[0].role"},
                      Bad{R"({"messages": [{"role": "user", "content": 5}]})", true, "messages[0].content"},
                      Bad{R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})", true, "tools"},
                      Bad{R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})", true, "tool_choice"},
                      Bad{R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})", true,
                          "response_format"},
                      Bad{R"({"prompt": "x", "suffix": "y"})", false, "suffix"},
                      Bad{R"({"prompt": [1, 18446744073709551615]})", false, "prompt"},
                      Bad{R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 2})", true, "logprobs"},
                      Bad{R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", true, "top_logprobs"},
                      Bad{R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 30})", true,
                          "top_logprobs"},
                      Bad{R"({"prompt": "x", "speculative": true})", false, "speculative"},
                      // vLLM's and OpenAI's fields that would change the text, at anything but their defaults
                      Bad{R"({"prompt": "x", "repetition_penalty": 1.2})", false, "repetition_penalty"},
                      Bad{R"({"prompt": "x", "length_penalty": 0.5})", false, "length_penalty"},
                      Bad{R"({"prompt": "x", "stop_token_ids": [28]})", false, "stop_token_ids"},
                      Bad{R"({"prompt": "x", "min_tokens": 5})", false, "min_tokens"},
                      Bad{R"({"prompt": "x", "ignore_eos": true})", false, "ignore_eos"},
                      Bad{R"({"prompt": "x", "include_stop_str_in_output": true})", false, "include_stop_str_in_output"},
                      Bad{R"({"prompt": "x", "skip_special_tokens": false})", false, "skip_special_tokens"},
                      Bad{R"({"prompt": "x", "guided_choice": ["a", "b"]})", false, "guided_choice"},
                      Bad{R"({"messages": [{"role": "user", "content": "x"}], "guided_json": {}})", true, "guided_json"},
                      Bad{R"({"messages": [{"role": "user", "content": "x"}], "structured_outputs": {"regex": "a+"}})", true, "structured_outputs"},
                      Bad{R"({"messages": [{"role": "user", "content": "x"}], "modalities": ["text", "audio"]})", true, "modalities"},
                      Bad{R"({"messages": [{"role": "user", "content": "x"}], "prediction": {"type": "content", "content": "y"}})", true,
                          "prediction"},
                      Bad{R"({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "low"})", true, "reasoning_effort"},
                      Bad{R"({"prompt": "x", "user": 5})", false, "user"},
                      // the messages name what is wrong
                      Bad{R"({"prompt": []})", false, "prompt"}, Bad{R"({"prompt": [1, 2, 1e2]})", false, "prompt"},
                      Bad{R"({"prompt": "x", "top_p": -0.1})", false, "top_p"},
                      Bad{R"({"prompt": "x", "seed": 18446744073709551616})", false, "seed"},
                      Bad{R"({"prompt": "x", "seed": 1.5})", false, "seed"},
                      Bad{R"({"prompt": "x", "stream": true, "stream_options": {"include_usage": "yes"}})", false,
                          "stream_options.include_usage"},
                      Bad{R"({"prompt": "x", "speculative": "ngram:k=9"})", false, "speculative"}));

// What each refusal says: the rule broken and the value sent.
TEST(OpenAiParse, RefusalsSayWhatIsWrong) {
  const auto message = [](const char* body, bool chat = false) {
    try {
      parse_completion(json::parse(body), chat);
    } catch (const ApiError& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_EQ(message(R"({"prompt": []})"), "'prompt' must not be empty");
  EXPECT_EQ(message(R"({"prompt": [1, 2, 1e2]})"), "'prompt' token ids must be integers, got 100.0 at [2]");
  EXPECT_EQ(message(R"({"prompt": [[1.5]]})"), "'prompt' token ids must be integers, got 1.5 at [0]");
  EXPECT_EQ(message(R"({"prompt": "x", "top_p": 0})"), "'top_p' must be in (0, 1], got 0");
  EXPECT_EQ(message(R"({"prompt": "x", "seed": 1e30})"), "'seed' must be in [-2^63, 2^64 - 1], got 1e+30");
  EXPECT_EQ(message(R"({"prompt": "x", "max_tokens": 1e30})"), "'max_tokens' must be in [0, 2147483647], got 1e+30");
  EXPECT_EQ(message(R"({"messages": [{"role": "tool", "content": "x"}]})", true),
            "'messages[0].role' must be system, developer, user or assistant, got 'tool'");
  // A positive top_p under float's range keeps the most likely token alone.
  EXPECT_GT(parse_completion(json::parse(R"({"prompt": "x", "top_p": 1e-300})"), false).sampling.top_p, 0.0f);
  // OpenAI's error codes where it has them
  EXPECT_EQ(error_body(ApiError(404, "m", "model", "not_found_error", "model_not_found"))["error"]["code"], "model_not_found");
  EXPECT_TRUE(error_body(ApiError(400, "m", "prompt"))["error"]["code"].is_null());
}

// The fields clients send at their "none" values (the openai package's defaults, LangChain's) pass.
TEST(OpenAiParse, UnsupportedFieldsAtTheirDefaultsPass) {
  const json chat = json::parse(R"({"messages": [{"role": "user", "content": "x"}], "tools": [], "functions": [], "tool_choice": "none",
                                    "function_call": "auto", "response_format": {"type": "text"}})");
  EXPECT_EQ(parse_completion(chat, true).messages.size(), 1u);
  EXPECT_EQ(parse_completion(json::parse(R"({"prompt": "x", "suffix": ""})"), false).prompt, "x");
  const json vllm = json::parse(R"({"prompt": "x", "repetition_penalty": 1, "length_penalty": 1.0, "stop_token_ids": [], "min_tokens": 0,
                                    "ignore_eos": false, "include_stop_str_in_output": false, "skip_special_tokens": true,
                                    "guided_json": null, "user": "u", "some_field_of_another_server": 3})");
  EXPECT_EQ(parse_completion(vllm, false).prompt, "x");
  EXPECT_EQ(parse_completion(json::parse(R"({"messages": [{"role": "user", "content": "x"}], "modalities": ["text"]})"), true).messages.size(), 1u);
}

// Completions take "logprobs" as a count of alternatives, chat as true with "top_logprobs".
TEST(OpenAiParse, Logprobs) {
  EXPECT_EQ(parse_completion(json::parse(R"({"prompt": "x"})"), false).logprobs, -1);
  EXPECT_EQ(parse_completion(json::parse(R"({"prompt": "x", "logprobs": false})"), false).logprobs, -1);
  EXPECT_EQ(parse_completion(json::parse(R"({"prompt": "x", "logprobs": 0})"), false).logprobs, 0);
  EXPECT_EQ(parse_completion(json::parse(R"({"prompt": "x", "logprobs": 5})"), false).logprobs, 5);
  EXPECT_EQ(parse_completion(json::parse(R"({"prompt": "x", "logprobs": 2, "speculative": "off"})"), false).logprobs, 2);
  {  // speculating and reporting logprobs combine (the scheduler reads them from the verification rows)
    const CompletionRequest r = parse_completion(json::parse(R"({"prompt": "x", "logprobs": 2, "speculative": "ngram:k=4"})"), false);
    EXPECT_EQ(r.logprobs, 2);
    ASSERT_TRUE(r.speculation && *r.speculation);
    EXPECT_EQ((*r.speculation)->max_draft, 4u);
  }
  const char* chat = R"({"messages": [{"role": "user", "content": "x"}], )";
  EXPECT_EQ(parse_completion(json::parse(std::string(chat) + R"("logprobs": false})"), true).logprobs, -1);
  EXPECT_EQ(parse_completion(json::parse(std::string(chat) + R"("logprobs": true})"), true).logprobs, 0);
  EXPECT_EQ(parse_completion(json::parse(std::string(chat) + R"("logprobs": true, "top_logprobs": 20})"), true).logprobs, 20);
}

// The two shapes of a choice's "logprobs": offsets count characters, bytes are the token's own
// (a token that is part of a character keeps its bytes; its text is replaced when dumped).
TEST(OpenAiBodies, LogprobsShapes) {
  const std::vector<LogprobEntry> entries{{"a", -0.5f, {{"a", -0.5f}, {"b", -1.5f}, {"a", -2.0f}}},
                                          {"\xC3\xA9", -0.25f, {}}, {"\xE2", -3.0f, {}}, {"z", -1.0f, {}}};
  const json c = logprobs_json(false, entries, 4);
  EXPECT_EQ(c["tokens"].size(), 4u);
  EXPECT_EQ(c["token_logprobs"][1], -0.25f);
  EXPECT_EQ(c["text_offset"], json::parse("[4, 5, 6, 7]"));
  EXPECT_EQ(c["top_logprobs"][0], json::parse(R"({"a": -0.5, "b": -1.5})"));  // one text, the more likely id's
  EXPECT_EQ(c["top_logprobs"][1], json::parse(R"({"\u00e9": -0.25})"));       // the sampled token, always (logprobs 0)
  // Byte tokens, each U+FFFD once sent: one key, the most likely one's, where the dump made five
  // equal keys of which JSON readers keep the last (the sampled token's -0.125 read as -5.75).
  const std::vector<LogprobEntry> bytes{{"\xF0", -0.125f, {{"\xF0", -0.125f}, {"\xF1", -5.25f}, {"x", -5.5f}, {"\xF2", -5.75f}}}};
  EXPECT_EQ(json::parse(dump(logprobs_json(false, bytes, 0)["top_logprobs"][0])), json::parse(R"({"\ufffd": -0.125, "x": -5.5})"));
  const json h = logprobs_json(true, entries, 0);
  ASSERT_EQ(h["content"].size(), 4u);
  EXPECT_TRUE(h["refusal"].is_null());
  EXPECT_EQ(h["content"][0]["top_logprobs"].size(), 3u);
  EXPECT_EQ(h["content"][0]["top_logprobs"][1]["token"], "b");
  EXPECT_EQ(h["content"][1]["bytes"], json::parse("[195, 169]"));
  EXPECT_EQ(h["content"][2]["bytes"], json::parse("[226]"));
  EXPECT_EQ(dump(h["content"][2]["token"]), "\"\xEF\xBF\xBD\"");
  const ResponseHead cmpl{"cmpl-1", "m", 100, false};
  EXPECT_EQ(completion_body(cmpl, "az", "stop", {}, c)["choices"][0]["logprobs"], c);
  EXPECT_TRUE(completion_body(cmpl, "az", "stop", {})["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(chunk_body(cmpl, "a", "", true, c)["choices"][0]["logprobs"], c);
}

TEST(OpenAiBodies, Shapes) {
  const ResponseHead chat{"chatcmpl-1", "m", 100, true}, cmpl{"cmpl-1", "m", 100, false};
  const json c = completion_body(chat, "hi", "stop", {3, 1});
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["choices"][0]["message"]["content"], "hi");
  EXPECT_EQ(c["usage"]["total_tokens"], 4);
  EXPECT_EQ(completion_body(cmpl, "hi", "length", {})["choices"][0]["text"], "hi");
  const json first = chunk_body(chat, "", "", true);
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(chunk_body(chat, "", "stop", false)["choices"][0]["delta"], json::object());
  EXPECT_EQ(usage_chunk(cmpl, {2, 2})["choices"], json::array());
  const json e = error_body(ApiError(400, "bad n", "n"));
  EXPECT_EQ(e["error"]["param"], "n");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(sse(json{{"text", "a\xC3"}}), "data: {\"text\":\"a\xEF\xBF\xBD\"}\n\n");  // invalid UTF-8 replaced, never thrown
}

}  // namespace
}  // namespace tq::serve
