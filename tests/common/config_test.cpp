#include "common/config.h"

#include <gtest/gtest.h>

#include "common/curve.h"

#include <filesystem>

#include "common/errors.h"

namespace {

using llava::ConfigError;
using llava::parse_config;

const std::string kGood = R"(mode: concurrent
model:
  checkpoint: /models/x
  dtype: float16
stages:
  vision:
    devices: [cuda:0]
    memory_limit: 8GiB
  language:
    devices: [cuda:1]
    memory_limit: 40GiB
    batch_size: 16
)";

// The ConfigError message for `yaml`, or "" if it parses.
std::string error_of(const std::string& yaml) {
  try {
    parse_config(yaml, "test.yaml", /*check_files=*/false);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(Config, LoadsEveryShippedConfig) {
  const std::filesystem::path configs = std::string(LLAVA_PIPE_SOURCE_DIR) + "/configs";
  int loaded = 0;
  for (const auto& entry : std::filesystem::directory_iterator(configs)) {
    if (entry.path().extension() != ".yaml") continue;
    // Only the demo's and tiny-random's checkpoints ship with the project; the GPU configs name a folder
    // the user provides.
    bool is_demo = entry.path().filename() == "demo.yaml" || entry.path().filename() == "tiny-random.yaml";
    EXPECT_NO_THROW(llava::load_config(entry.path().string(), is_demo)) << entry.path();
    ++loaded;
  }
  EXPECT_EQ(loaded, 9);  // with slurm-cpu.yaml and tiny-random.yaml
}

TEST(Config, ReadsEverySection) {
  auto c = parse_config(kGood, "test.yaml", false);
  EXPECT_EQ(c.mode, llava::Mode::kConcurrent);
  EXPECT_EQ(c.model.checkpoint, "/models/x");
  EXPECT_EQ(c.vision.devices, std::vector<std::string>{"cuda:0"});
  EXPECT_EQ(c.language.memory_limit, 40ull << 30);
  EXPECT_EQ(c.language.batch_size, 16);
  EXPECT_EQ(c.coordinator.heartbeat_interval_ms, 500u);
  EXPECT_EQ(c.generation.max_new_tokens, 64);
}

TEST(Config, ResolvesCheckpointAgainstTheConfigFolder) {
  auto c = parse_config("model: {checkpoint: ../ckpt}\nstages: {vision: {devices: cpu}, "
                        "language: {devices: cpu}}\n",
                        "/etc/llava/configs/x.yaml", false);
  EXPECT_EQ(c.model.checkpoint, "/etc/llava/ckpt");
}

TEST(Config, UnknownKeyNamesLineAndSuggests) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("    batch_size: 16"), 18, "    bach_size: 16");
  EXPECT_EQ(error_of(yaml),
            "test.yaml:12:5: unknown key 'stages.language.bach_size'; did you mean 'batch_size'?");
}

// yaml-cpp keeps both and a lookup finds the first: a silent choice, refused instead.
TEST(Config, ADuplicateKeyNamesBothLines) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("    batch_size: 16"), 18, "    batch_size: 16\n    batch_size: 32");
  EXPECT_EQ(error_of(yaml),
            "test.yaml:13:5: stages.language.batch_size: duplicate key (first given at line 12); give "
            "each key once");
}

TEST(Config, UnknownKeyWithNoNearNameListsKnownOnes) {
  std::string message = error_of(kGood + "colour: blue\n");
  EXPECT_NE(message.find("test.yaml:13:1: unknown key 'colour' (known here:"), std::string::npos)
      << message;
}

TEST(Config, WrongTypeNamesKeyAndValue) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("batch_size: 16"), 14, "batch_size: many");
  EXPECT_EQ(error_of(yaml),
            "test.yaml:12:17: stages.language.batch_size: expected a whole number, got 'many'");
}

TEST(Config, BadUnitIsRejected) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("8GiB"), 4, "8 gigs");
  EXPECT_EQ(error_of(yaml), "test.yaml:8:19: stages.vision.memory_limit: expected a size such "
                            "as 22GiB or 512MiB, got '8 gigs'");
}

TEST(Config, DeviceSharedByConcurrentStagesIsRejected) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("[cuda:1]"), 8, "[cuda:0]");
  std::string message = error_of(yaml);
  EXPECT_NE(message.find("test.yaml:10:5: stages.language.devices: cuda:0 is also a vision "
                         "device"),
            std::string::npos)
      << message;
  EXPECT_EQ(error_of(yaml + "share_devices: true\n"), "");
}

TEST(Config, MoreReplicasThanDevicesNeedsSharing) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("    devices: [cuda:1]"), 21, "    replicas: 3\n    devices: [cuda:1]");
  EXPECT_NE(error_of(yaml).find("3 replicas over 1 device(s)"), std::string::npos);
  EXPECT_EQ(error_of(yaml + "share_devices: true\n"), "");
}

TEST(Config, SequentialNeedsOneSharedDevice) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("concurrent"), 10, "sequential");
  EXPECT_NE(error_of(yaml).find("both stages must list the same single device"),
            std::string::npos);
  yaml.replace(yaml.find("[cuda:1]"), 8, "[cuda:0]");
  EXPECT_EQ(error_of(yaml), "");
}

TEST(Config, DeviceListedTwiceInAStage) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("[cuda:0]"), 8, "[cuda:0, cuda:0]");
  EXPECT_EQ(error_of(yaml), "test.yaml:7:23: stages.vision.devices: 'cuda:0' is listed twice");
}

TEST(Config, BadDeviceNameIsRejected) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("[cuda:0]"), 8, "[gpu0]");
  EXPECT_EQ(error_of(yaml),
            "test.yaml:7:15: stages.vision.devices: 'gpu0' is not a device (cpu or cuda:N)");
}

TEST(Config, EnumValueListsTheChoices) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("concurrent"), 10, "parallel");
  EXPECT_EQ(error_of(yaml), "test.yaml:1:7: mode: 'parallel' is not one of sequential, concurrent, auto");
}

TEST(Config, YamlSyntaxErrorHasLine) {
  std::string message = error_of("model:\n  checkpoint: [unclosed\n");
  EXPECT_EQ(message.rfind("test.yaml:", 0), 0u) << message;
  EXPECT_NE(message.find(":3:"), std::string::npos) << message;
}

// yaml-cpp stops a parse some hundreds of levels deep (no crash); the error says so with
// its place, not yaml-cpp's "bad file".
TEST(Config, NestingPastYamlCppsLimitIsNamedWithItsPlace) {
  const std::string deep =
      kGood + "x: " + std::string(100000, '[') + std::string(100000, ']') + "\n";
  const std::string message = error_of(deep);
  EXPECT_EQ(message.rfind("test.yaml:", 0), 0u) << message;
  EXPECT_NE(message.find(": nested too deep (yaml-cpp stops at "), std::string::npos) << message;
}

TEST(Config, MissingSectionIsNamed) {
  EXPECT_NE(error_of("model: {checkpoint: x}\n").find("stages: section is missing"),
            std::string::npos);
}

TEST(Config, OutOfRangeSamplingIsRejected) {
  EXPECT_NE(error_of(kGood + "generation: {top_p: 0}\n").find("generation.top_p: 0 is out of range"),
            std::string::npos);
  EXPECT_NE(error_of(kGood + "generation: {temperature: -1}\n").find("out of range"),
            std::string::npos);
  // std::stod reads "nan", and NaN fails no comparison: the check is written to refuse it.
  EXPECT_NE(error_of(kGood + "generation: {temperature: nan}\n")
                .find("generation.temperature: nan is out of range [0, 100]"),
            std::string::npos);
  EXPECT_NE(error_of(kGood + "generation: {top_p: nan}\n")
                .find("generation.top_p: nan is out of range (0, 1]"),
            std::string::npos);
}

TEST(Config, ReadsMinPWithinZeroToOne) {
  EXPECT_DOUBLE_EQ(parse_config(kGood, "t.yaml", false).generation.min_p, 0.0);  // off
  EXPECT_DOUBLE_EQ(
      parse_config(kGood + "generation: {min_p: 0.05}\n", "t.yaml", false).generation.min_p, 0.05);
  EXPECT_DOUBLE_EQ(
      parse_config(kGood + "generation: {min_p: 1}\n", "t.yaml", false).generation.min_p, 1.0);
  EXPECT_NE(error_of(kGood + "generation: {min_p: 1.5}\n")
                .find("test.yaml:13:21: generation.min_p: 1.5 is out of range [0, 1]"),
            std::string::npos);
  EXPECT_NE(error_of(kGood + "generation: {min_p: -0.1}\n")
                .find("generation.min_p: -0.1 is out of range [0, 1]"),
            std::string::npos);
  EXPECT_NE(error_of(kGood + "generation: {min_p: lots}\n")
                .find("generation.min_p: expected a number, got 'lots'"),
            std::string::npos);
  EXPECT_NE(error_of(kGood + "generation: {min_pp: 0.1}\n").find("did you mean 'min_p'?"),
            std::string::npos);
}

TEST(Config, StopStringsAreOneOrAListAndNeverEmpty) {
  EXPECT_EQ(parse_config(kGood + "generation: {stop: 'USER:'}\n", "t.yaml", false).generation.stop,
            (std::vector<std::string>{"USER:"}));
  EXPECT_EQ(parse_config(kGood + "generation:\n  stop: [\"\\n\\n\", '###']\n", "t.yaml", false)
                .generation.stop,
            (std::vector<std::string>{"\n\n", "###"}));
  EXPECT_TRUE(parse_config(kGood, "t.yaml", false).generation.stop.empty());
  EXPECT_NE(error_of(kGood + "generation:\n  stop: ['']\n")
                .find("test.yaml:14:9: generation.stop: a stop string is empty"),
            std::string::npos);
  EXPECT_NE(error_of(kGood + "generation: {stop: {a: b}}\n")
                .find("expected a string or a list of strings"),
            std::string::npos);
  // A stop string that could match inside a character would cut the text in it.
  EXPECT_EQ(llava::stop_strings_problem({"\xbf\xbd"}), "a stop string is not valid UTF-8");
  EXPECT_EQ(llava::stop_strings_problem({"ok", "\xe6\x97"}), "a stop string is not valid UTF-8");
  EXPECT_EQ(llava::stop_strings_problem({"\xc0\xaf"}),
            "a stop string is not valid UTF-8");  // overlong
  EXPECT_EQ(llava::stop_strings_problem({"\xed\xa0\x80"}), "a stop string is not valid UTF-8");
  EXPECT_EQ(llava::stop_strings_problem({"日本", "\xf0\x9f\x98\x80", "###"}), "");
}

TEST(Config, EndpointMustBeIpcOrTcp) {
  EXPECT_NE(error_of(kGood + "coordinator: {endpoint: 'udp://x'}\n")
                .find("must start with ipc:// or tcp://"),
            std::string::npos);
}

TEST(Config, MissingCheckpointFolderIsReported) {
  try {
    parse_config(kGood, "test.yaml", /*check_files=*/true);
    FAIL() << "expected an error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "test.yaml:3:15: model.checkpoint: no config.json in '/models/x'");
  }
}

TEST(Config, CurveKeysResolveAgainstTheConfigAndAreChecked) {
  const std::string dir = testing::TempDir();
  llava::write_curve_key(dir + "c", llava::generate_curve_key());
  llava::write_curve_key(dir + "w", llava::generate_curve_key());
  llava::write_curve_key(dir + "remote", llava::generate_curve_key());
  const std::string head = "model: {checkpoint: " + std::string(LLAVA_PIPE_SOURCE_DIR) +
                           "/tests/data/tiny-llava}\nstages: {vision: {devices: cpu}, language: {devices: cpu}}\n";
  auto c = parse_config(head +
                            "coordinator:\n  endpoint: 'tcp://0.0.0.0:5555'\n"
                            "  curve: {server_key: c.key_secret, worker_key: w.key_secret, allowed: [remote.key]}\n",
                        dir + "p.yaml", false);
  EXPECT_TRUE(c.coordinator.curve());
  EXPECT_EQ(c.coordinator.curve_server_key, dir + "c.key_secret");
  ASSERT_EQ(c.coordinator.curve_allowed.size(), 1u);
  EXPECT_EQ(c.coordinator.curve_allowed[0], dir + "remote.key");
  // check_files: key files are read; a missing one is named with the YAML position.
  try {
    parse_config(head + "coordinator:\n  endpoint: 'tcp://0.0.0.0:5555'\n"
                        "  curve: {server_key: c.key_secret, worker_key: nope.key_secret}\n",
                 dir + "p.yaml", true);
    FAIL() << "a missing key file was accepted";
  } catch (const llava::ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("p.yaml:5:49: "), std::string::npos) << what;
    EXPECT_NE(what.find("coordinator.curve.worker_key: " + dir + "nope.key_secret: cannot open the key file"),
              std::string::npos) << what;
  }
  // A worker key must carry its secret; ipc:// needs no encryption.
  EXPECT_THROW(parse_config(head + "coordinator:\n  endpoint: 'tcp://0.0.0.0:5555'\n"
                                   "  curve: {server_key: c.key, worker_key: w.key}\n",
                            dir + "p.yaml", true),
               llava::ConfigError);
  EXPECT_THROW(parse_config(head + "coordinator:\n  curve: {server_key: c.key_secret, worker_key: w.key_secret}\n",
                            dir + "p.yaml", false),
               llava::ConfigError);
}

TEST(Config, ExternalWorkersNeedConcurrentModeAndAFixedEndpoint) {
  const std::string stages = "stages: {vision: {devices: cpu, launch: external}, language: {devices: cpu}}\n";
  auto c = parse_config("model: {checkpoint: /m}\nmode: concurrent\nshare_devices: true\n" + stages +
                            "coordinator: {endpoint: 'tcp://0.0.0.0:5555'}\n",
                        "t.yaml", false);
  EXPECT_TRUE(c.vision.external);
  EXPECT_FALSE(c.language.external);
  auto error = [&](const std::string& yaml) {
    try {
      parse_config(yaml, "t.yaml", false);
    } catch (const llava::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(error("model: {checkpoint: /m}\n" + stages).find("external workers need mode: concurrent"),
            std::string::npos);
  EXPECT_NE(error("model: {checkpoint: /m}\nmode: concurrent\nshare_devices: true\n" + stages)
                .find("external workers need a fixed coordinator.endpoint"),
            std::string::npos);
  EXPECT_NE(error("model: {checkpoint: /m}\nmode: concurrent\nstages: {vision: {devices: cpu, launch: "
                  "elsewhere}, language: {devices: cpu}}\n")
                .find("t.yaml:3:"),
            std::string::npos);
}

}  // namespace

namespace {

// The defaults: mode auto and release auto (resolved against the device and the host);
// an explicit release in a concurrent pipeline is refused, since nothing is given back.
TEST(Config, ModeAndReleaseDefaultToAutoAndOffloadIsAChoice) {
  const std::string plain = "model: {checkpoint: /models/x}\nstages: {vision: {devices: cuda:0}, "
                            "language: {devices: cuda:0}}\n";
  const auto config = parse_config(plain, "test.yaml", false);
  EXPECT_EQ(config.mode, llava::Mode::kAuto);
  EXPECT_EQ(config.vision.release, llava::Release::kAuto);
  EXPECT_EQ(config.language.release, llava::Release::kAuto);
  const auto offload = parse_config(
      "mode: sequential\nmodel: {checkpoint: /models/x}\nstages: {vision: {devices: cuda:0, release: offload}, "
      "language: {devices: cuda:0, release: unload}}\n",
      "test.yaml", false);
  EXPECT_EQ(offload.vision.release, llava::Release::kOffload);
  EXPECT_EQ(offload.language.release, llava::Release::kUnload);
  std::string yaml = kGood;
  yaml.replace(yaml.find("    memory_limit: 8GiB"), 22, "    memory_limit: 8GiB\n    release: offload");
  EXPECT_EQ(error_of(yaml), "test.yaml:7:5: stages.vision.release: only sequential mode gives devices back; remove it");
  yaml = kGood;
  yaml.replace(yaml.find("    memory_limit: 8GiB"), 22, "    memory_limit: 8GiB\n    release: later");
  EXPECT_EQ(error_of(yaml), "test.yaml:9:14: stages.vision.release: 'later' is not one of exit, unload, offload, auto");
}

}  // namespace
