// The sampling parameters' one list of keys and their trip over the wire.
#include "common/sampling.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/errors.h"
#include "common/token_table.h"
#include "common/wire.h"

namespace {

using llava::SamplingParams;
using llava::wire::Incoming;
using llava::wire::Outgoing;

TEST(Sampling, KeysAreListedOnceInTheOrderErrorsAreReported) {
  EXPECT_EQ(llava::sampling_keys(),
            (std::vector<std::string>{"max_new_tokens", "min_tokens", "temperature", "top_k",
                                      "top_p", "min_p", "repetition_penalty", "presence_penalty",
                                      "frequency_penalty", "seed"}));
}

TEST(Sampling, RoundTripsOverTheWireInALanguageTask) {
  SamplingParams sent;
  sent.max_new_tokens = 300;
  sent.min_tokens = 12;
  sent.temperature = 0.75;  // binary fractions: exact as the wire's 32-bit floats
  sent.top_k = 40;
  sent.top_p = 0.875;
  sent.min_p = 0.0625;
  sent.repetition_penalty = 1.25;
  sent.presence_penalty = -0.5;
  sent.frequency_penalty = 1.75;
  sent.seed = UINT64_MAX;
  sent.stop_token_ids = {2, 32000};
  sent.logprobs = 7;
  sent.logit_bias = {{5, -100.0f}, {32000, 2.5f}};
  sent.json_object = true;
  sent.json_schema = R"({"type":"object","properties":{"a":{"type":"integer"}}})";

  Outgoing out(9, 1);
  llava::to_wire(sent, out.header().getBody().initLanguageTask().initSampling());
  Incoming in = Incoming::parse(out.parts(), /*with_routing_id=*/false, llava::wire::Limits{});
  const SamplingParams got = llava::from_wire(in.header().getBody().getLanguageTask().getSampling());

  EXPECT_EQ(got.max_new_tokens, 300);
  EXPECT_EQ(got.min_tokens, 12);
  EXPECT_EQ(got.temperature, 0.75);
  EXPECT_EQ(got.top_k, 40);
  EXPECT_EQ(got.top_p, 0.875);
  EXPECT_EQ(got.min_p, 0.0625);
  EXPECT_EQ(got.repetition_penalty, 1.25);
  EXPECT_EQ(got.presence_penalty, -0.5);
  EXPECT_EQ(got.frequency_penalty, 1.75);
  EXPECT_EQ(got.seed, UINT64_MAX);
  EXPECT_EQ(got.stop_token_ids, (std::vector<int32_t>{2, 32000}));
  EXPECT_EQ(got.logprobs, 7);
  EXPECT_EQ(got.logit_bias, sent.logit_bias);
  EXPECT_TRUE(got.json_object);
  EXPECT_EQ(got.json_schema, sent.json_schema);
}

// JSON mode's token table crosses with its task; a peer's that does not hold together
// (an end past its bytes, ends going back) is refused, naming what it is.
TEST(Sampling, TheTokenTableCrossesWithItsTaskAndABrokenOneIsRefused) {
  llava::TokenTable table;
  for (const char* piece : {"", "{", " \"a\"", "\xc3"}) table.push_back(piece);
  Outgoing out(9, 1);
  llava::to_wire(table, out.header().getBody().initLanguageTask());
  Incoming in = Incoming::parse(out.parts(), false, llava::wire::Limits{});
  const llava::TokenTable got =
      llava::token_table_from_wire(in.header().getBody().getLanguageTask());
  EXPECT_EQ(got.bytes, table.bytes);
  EXPECT_EQ(got.ends, table.ends);
  EXPECT_EQ(got[2], " \"a\"");
  EXPECT_EQ(got[0], "");
  for (const std::vector<uint32_t>& ends :
       {std::vector<uint32_t>{0, 1, 9}, std::vector<uint32_t>{0, 3, 1}}) {
    Outgoing lying;
    auto task = lying.header().getBody().initLanguageTask();
    task.setTokenBytes(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>("{ab"), 3));
    auto list = task.initTokenEnds(static_cast<unsigned>(ends.size()));
    for (size_t i = 0; i < ends.size(); ++i) list.set(static_cast<unsigned>(i), ends[i]);
    Incoming read = Incoming::parse(lying.parts(), false, llava::wire::Limits{});
    try {
      llava::token_table_from_wire(read.header().getBody().getLanguageTask());
      ADD_FAILURE() << "a broken table was taken";
    } catch (const llava::RequestError& e) {
      EXPECT_NE(
          std::string(e.what()).find("token table does not hold together (3 tokens, 3 bytes)"),
          std::string::npos)
          << e.what();
    }
  }
}

TEST(Sampling, ATaskWithoutLogprobsAsksForNoneAndAPeerCannotAskForMoreThanTwenty) {
  Outgoing plain;
  plain.header().getBody().initLanguageTask().initSampling().setTopK(3);
  Incoming in = Incoming::parse(plain.parts(), false, llava::wire::Limits{});
  EXPECT_EQ(llava::from_wire(in.header().getBody().getLanguageTask().getSampling()).logprobs, -1);
  for (int32_t asked : {100000, -5}) {
    Outgoing lying;
    lying.header().getBody().initLanguageTask().initSampling().setLogprobs(asked);
    Incoming read = Incoming::parse(lying.parts(), false, llava::wire::Limits{});
    const int got =
        llava::from_wire(read.header().getBody().getLanguageTask().getSampling()).logprobs;
    EXPECT_EQ(got, asked > 0 ? 20 : -1);
  }
}

TEST(Sampling, APeersPenaltyOutOfRangeIsNone) {
  // Past +-2, infinite or NaN: a score minus it would be no score at all; read as off.
  for (float sent : {3.0f, -2.5f, INFINITY, NAN}) {
    Outgoing lying;
    auto sampling = lying.header().getBody().initLanguageTask().initSampling();
    sampling.setPresencePenalty(sent);
    sampling.setFrequencyPenalty(sent);
    Incoming read = Incoming::parse(lying.parts(), false, llava::wire::Limits{});
    const SamplingParams got =
        llava::from_wire(read.header().getBody().getLanguageTask().getSampling());
    EXPECT_EQ(got.presence_penalty, 0.0) << sent;
    EXPECT_EQ(got.frequency_penalty, 0.0) << sent;
  }
}

TEST(Sampling, APeersLogitBiasKeepsOnlyValuesInRangeAndAtMostTheApisCount) {
  Outgoing lying;
  auto bias = lying.header().getBody().initLanguageTask().initSampling().initLogitBias(3000);
  for (unsigned i = 0; i < 3000; ++i) {
    bias[i].setId(static_cast<int32_t>(i));
    bias[i].setBias(i == 0 ? 150.0f : i == 1 ? NAN : i == 2 ? -INFINITY : 1.0f);
  }
  Incoming read = Incoming::parse(lying.parts(), false, llava::wire::Limits{});
  const SamplingParams got =
      llava::from_wire(read.header().getBody().getLanguageTask().getSampling());
  ASSERT_EQ(got.logit_bias.size(), llava::SamplingLimits::kLogitBiasIds);
  EXPECT_EQ(got.logit_bias.front(), (std::pair<int32_t, float>{3, 1.0f}));
}

TEST(Sampling, ATaskWithoutMinPLeavesItOff) {
  // A sender from before min_p: the field reads as its default, 0 (off).
  Outgoing out;
  out.header().getBody().initLanguageTask().initSampling().setTopP(0.5f);
  Incoming in = Incoming::parse(out.parts(), false, llava::wire::Limits{});
  const SamplingParams got = llava::from_wire(in.header().getBody().getLanguageTask().getSampling());
  EXPECT_EQ(got.min_p, 0.0);
  EXPECT_EQ(got.top_p, 0.5);
  EXPECT_EQ(got.presence_penalty, 0.0);  // and before the penalties
  EXPECT_EQ(got.frequency_penalty, 0.0);
}

}  // namespace
