// virtual-lights: a floe provider serving N simulated lights (Light + Switch + Dimmer + Color).
// A request to set Switch, Dimmer or Color updates the light and succeeds; anything else fails.
// Walked through in docs/PROVIDER_SDK.md.
#include <csignal>
#include <string>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "floe/sdk/provider.hpp"

using floe::sdk::Component;
using floe::sdk::Request;

namespace {

floe::sdk::Provider* g_provider = nullptr;
extern "C" void on_signal(int) { g_provider->stop(); }  // stop() is async-signal-safe

// Checks a requested value beyond its type (which the SDK already checked); empty if acceptable.
std::string refuse(const Request& r) {
  switch (r.component()) {
    case Component::Switch:
    case Component::Color: return {};
    case Component::Dimmer: {
      const double level = std::get<double>(*r.value());
      return level >= 0.0 && level <= 1.0 ? std::string{} : "Dimmer must be within 0.0 .. 1.0";
    }
    default: return "a virtual light only takes Switch, Dimmer and Color";
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"virtual-lights: N simulated lights served to floe-core (the demo provider)"};
  int count = 3;
  std::string name = "virtual-lights", group = "living_room", prefix = "light_", socket_dir;
  app.add_option("-n,--count", count, "Number of lights")->check(CLI::Range(1, 1000))->capture_default_str();
  app.add_option("--name", name, "Provider name; devices are <name>-1 .. <name>-N")->capture_default_str();
  app.add_option("--group", group, "Group the lights join")->capture_default_str();
  app.add_option("--prefix", prefix, "Entity ids are <prefix>1 .. <prefix>N")->capture_default_str();
  app.add_option("--socket-dir", socket_dir, "floe-core's socket directory (default: $FLOE_SOCKET_DIR, ...)");
  CLI11_PARSE(app, argc, argv);

  floe::sdk::Provider provider({.name = name, .socket_dir = socket_dir});
  for (int i = 1; i <= count; ++i) {
    const std::string n = std::to_string(i);
    auto& light = provider.add_device(
        {.id = name + "-" + n, .name = "Virtual light " + n, .groups = {group},
         .entities = {{.id = prefix + n, .name = "Light " + n,
                       .components = {Component::Light, Component::Switch, Component::Dimmer, Component::Color}}}});
    (void)light.set(0, Component::Switch, false);
    (void)light.set(0, Component::Dimmer, 0.0);
    (void)light.set(0, Component::Color, floe::ipc::Rgb{255, 255, 255});
  }

  // Runs on the provider's thread; a real provider might keep the Request and answer it later.
  provider.on_request([](Request& r) {
    if (std::string why = refuse(r); !why.empty()) return r.fail(why, floe::sdk::RequestStatus::kUnsupported);
    if (auto s = r.device().set(r.entity(), r.component(), *r.value()); s != floe::sdk::WriteStatus::kOk) {
      return r.fail(std::string(floe::ipc::to_string(s)));
    }
    spdlog::info("{}: {} = {}", r.entity_id(), floe::ipc::component_name(r.component()),
                 floe::ipc::format_value(r.component(), *r.value()));
    r.succeed();
  });

  g_provider = &provider;
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  spdlog::info("virtual-lights: serving {} light(s) as provider '{}' via {}", count, name, provider.socket_path());
  if (auto ran = provider.run(); !ran) {
    spdlog::error("virtual-lights: {}", ran.error().to_string());
    return 1;
  }
  spdlog::info("virtual-lights: stopped");
  return 0;
}
