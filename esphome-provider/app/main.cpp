// floe-esphome: serves ESPHome devices (native API, plaintext or Noise) to floe-core.
//   floe-esphome --config floe-esphome.yaml [--socket-dir DIR] [-v]
// The config format is in docs/ESPHOME.md.
#include <csignal>
#include <string>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "floe/esphome/config.hpp"
#include "floe/esphome/provider.hpp"
#include "floe/ipc/protobuf_log.hpp"

namespace {
floe::esphome::EsphomeProvider* g_provider = nullptr;
extern "C" void on_signal(int) { g_provider->stop(); }  // stop() is async-signal-safe
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"floe-esphome: ESPHome devices (native API) as floe devices"};
  std::string config_path, socket_dir;
  int verbose = 0;
  app.add_option("-c,--config", config_path, "YAML config: the devices to connect to (docs/ESPHOME.md)")->required();
  app.add_option("--socket-dir", socket_dir, "floe-core's socket directory (overrides the config's socket_dir)");
  app.add_flag("-v,--verbose", verbose, "More logging (-v debug, -vv trace)");
  CLI11_PARSE(app, argc, argv);
  if (verbose > 0) spdlog::set_level(verbose > 1 ? spdlog::level::trace : spdlog::level::debug);
  // Devices send protobuf; the provider reports what it cannot parse itself.
  floe::ipc::route_protobuf_logs_to_spdlog();

  auto config = floe::esphome::load_config(config_path);
  if (!config) {
    spdlog::error("floe-esphome: {}", config.error().code != 0 ? config.error().to_string() : config.error().message);
    return 2;
  }
  if (!socket_dir.empty()) config->socket_dir = socket_dir;
  spdlog::info("floe-esphome: {} device(s) from {}, provider '{}'", config->devices.size(), config_path, config->name);

  floe::esphome::EsphomeProvider provider(std::move(*config));
  g_provider = &provider;
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::signal(SIGPIPE, SIG_IGN);
  if (auto ran = provider.run(); !ran) {
    spdlog::error("floe-esphome: {}", ran.error().to_string());
    return 1;
  }
  spdlog::info("floe-esphome: stopped");
  return 0;
}
