#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "floe/core/state_file.hpp"

namespace floe::core {
namespace {

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/floe-state-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string path;
};

StoredState sample() {
  StoredState st;
  StoredDevice d{.id = "lamp", .name = "Lamp", .provider = "lights", .uid = {}, .entities = {}, .groups = {"kitchen"}};
  d.entities.push_back({.id = "lamp_light", .name = "Lamp light",
                        .components = {{ipc::Component::Light, 0}, {ipc::Component::Dimmer, 0},
                                       {ipc::Component::Text, 64}}});
  st.devices.push_back(d);
  st.groups = {"kitchen", "empty"};
  return st;
}

TEST(StateFile, RoundTrips) {
  auto back = state_from_json(state_to_json(sample()));
  ASSERT_TRUE(back) << back.error().to_string();
  EXPECT_EQ(*back, sample());
  EXPECT_EQ(schema_of(back->devices[0]).entities.size(), 1U);
}

TEST(StateFile, TheDeclaringUidRoundTripsAndOlderFilesHaveNone) {
  StoredState st = sample();
  st.devices[0].uid = 1000;
  const std::string text = state_to_json(st);
  EXPECT_NE(text.find("\"uid\": 1000"), std::string::npos) << text;
  auto back = state_from_json(text);
  ASSERT_TRUE(back) << back.error().to_string();
  EXPECT_EQ(*back, st);
  // Written before uids were recorded: no "uid" key, and none is made up.
  EXPECT_EQ(state_to_json(sample()).find("\"uid\""), std::string::npos);
  auto older = state_from_json(state_to_json(sample()));
  ASSERT_TRUE(older) << older.error().to_string();
  EXPECT_FALSE(older->devices[0].uid.has_value());
  for (const char* bad : {"-1", "4294967295", "\"1000\"", "1.5"}) {
    auto st2 = state_from_json(std::string(R"({"version": 1, "devices": [{"id": "a", "name": "A", "provider": "p", "uid": )") +
                               bad + R"(, "groups": [], "entities": []}], "groups": []})");
    ASSERT_FALSE(st2) << bad;
    EXPECT_NE(st2.error().message.find("devices[0].uid"), std::string::npos) << bad << ": " << st2.error().message;
  }
}

TEST(StateFile, MissingFileIsEmptyState) {
  TempDir dir;
  auto st = load_state(dir.path + "/state.json");
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_TRUE(st->devices.empty());
}

TEST(StateFile, SaveReplacesAtomicallyAndLeavesNoTemp) {
  TempDir dir;
  const std::string path = dir.path + "/state.json";
  ASSERT_TRUE(save_state(path, StoredState{}));
  ASSERT_TRUE(save_state(path, sample()));
  auto st = load_state(path);
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_EQ(*st, sample());
  for (const auto& e : std::filesystem::directory_iterator(dir.path)) {
    EXPECT_EQ(e.path().filename(), "state.json") << "left behind: " << e.path();
  }
  struct stat sb{};
  ASSERT_EQ(::stat(path.c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 0777, 0600U);
}

// A state file linked to persistent storage (from a tmpfs socket directory, say) stays a link:
// the file it points to is what is replaced.
TEST(StateFile, SavingThroughASymlinkReplacesItsTargetAndKeepsTheLink) {
  TempDir dir;
  std::filesystem::create_directory(dir.path + "/persist");
  const std::string link = dir.path + "/state.json";
  std::filesystem::create_symlink("persist/state.json", link);
  ASSERT_TRUE(save_state(link, sample()));
  EXPECT_TRUE(std::filesystem::is_symlink(link));
  auto st = load_state(dir.path + "/persist/state.json");
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_EQ(*st, sample());
  ASSERT_TRUE(save_state(link, StoredState{}));
  EXPECT_TRUE(std::filesystem::is_symlink(link));
  EXPECT_EQ(*load_state(link), StoredState{});
}

// A state file whose directory is missing (a disk not mounted yet) is not a first start: starting
// empty would overwrite the real state once the directory appears.
TEST(StateFile, AMissingDirectoryIsAnErrorNotAFirstStart) {
  TempDir dir;
  auto st = load_state(dir.path + "/not-mounted/state.json");
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message.find("does not exist"), std::string::npos) << st.error().message;
}

TEST(StateFile, OneCoreAtATimeHoldsTheLock) {
  TempDir dir;
  const std::string path = dir.path + "/state.json";
  auto first = lock_state_file(path);
  ASSERT_TRUE(first) << first.error().to_string();
  auto second = lock_state_file(path);  // another open file description: refused like a process
  ASSERT_FALSE(second);
  EXPECT_NE(second.error().message.find("in use by another floe-core"), std::string::npos) << second.error().message;
  first->reset();
  EXPECT_TRUE(lock_state_file(path));
}

TEST(StateFile, CorruptFileIsAClearError) {
  TempDir dir;
  const std::string path = dir.path + "/state.json";
  std::ofstream(path) << "{ not json";
  auto st = load_state(path);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message.find("corrupt"), std::string::npos) << st.error().message;
  EXPECT_NE(st.error().message.find(path), std::string::npos);
}

TEST(StateFile, StructuralErrorsNameTheField) {
  auto st = state_from_json(R"({"version": 1, "devices": [{"id": "a", "name": "A", "provider": "p",
                                "groups": [], "entities": [{"name": "x", "components": []}]}], "groups": []})");
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message.find("devices[0].entities[0]: missing 'id'"), std::string::npos) << st.error().message;
  auto v = state_from_json(R"({"version": 7, "devices": [], "groups": []})");
  ASSERT_FALSE(v);
  EXPECT_NE(v.error().message.find("version 7"), std::string::npos);
}

}  // namespace
}  // namespace floe::core
