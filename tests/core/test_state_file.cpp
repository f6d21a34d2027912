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
  StoredDevice d{.id = "lamp", .name = "Lamp", .provider = "lights", .entities = {}, .groups = {"kitchen"}};
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
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  struct stat sb{};
  ASSERT_EQ(::stat(path.c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 0777, 0600U);
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
