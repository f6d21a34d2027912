// floe-esphome-sim: a simulated ESPHome device fleet speaking the native API (see README.md).
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>

#include "config.hpp"
#include "sim.hpp"

int main(int argc, char** argv) {
  using namespace floe::esphome;
  CLI::App app{"floe-esphome-sim: simulated ESPHome devices on the native API (plaintext and Noise)"};
  std::string config_path;
  unsigned generate = 0;
  std::string key;
  std::string host;
  std::uint32_t sensor_ms = 0, ping_ms = 0;
  bool no_time = false;
  std::string level = "info";
  app.add_option("-c,--config", config_path, "YAML config with the devices (see README.md)");
  app.add_option("-n,--devices", generate, "Generate N devices with one entity of every kind instead of a config");
  app.add_option("--key", key, "Base64 encryption key for the generated devices (default: plaintext)");
  app.add_option("--host", host, "IPv4 address to listen on (default 127.0.0.1)");
  app.add_option("--sensor-interval-ms", sensor_ms, "How often sensors change (0: never; default 5000)");
  app.add_option("--ping-idle-ms", ping_ms, "Ping a client after this much silence (default 60000)");
  app.add_flag("--no-time-requests", no_time, "Do not send GetTimeRequest to clients");
  app.add_option("--log-level", level, "trace, debug, info, warn, error");
  CLI11_PARSE(app, argc, argv);

  // stdout carries only the JSON line with the ports; logs go to stderr.
  spdlog::set_default_logger(spdlog::stderr_color_mt("esphome-sim"));
  spdlog::set_level(spdlog::level::from_str(level));

  if (config_path.empty() == (generate == 0)) {
    std::cerr << "floe-esphome-sim: give either --config FILE or --devices N\n";
    return 2;
  }
  std::optional<Psk> psk;
  if (!key.empty()) {
    auto p = decode_psk(key);
    if (!p) {
      std::cerr << "floe-esphome-sim: --key: " << p.error().message << "\n";
      return 2;
    }
    psk = *p;
  }
  sim::SimConfig cfg;
  if (!config_path.empty()) {
    auto loaded = sim::load_config(config_path);
    if (!loaded) {
      std::cerr << "floe-esphome-sim: " << loaded.error().to_string() << "\n";
      return 2;
    }
    cfg = std::move(*loaded);
  } else {
    cfg = sim::generate_config(generate, psk);
  }
  if (!host.empty()) cfg.host = host;
  if (app.count("--sensor-interval-ms")) cfg.sensor_interval_ms = sensor_ms;
  if (app.count("--ping-idle-ms")) cfg.ping_idle_ms = ping_ms;
  if (no_time) cfg.send_time_requests = false;

  auto simulator = sim::Simulator::create(std::move(cfg));
  if (!simulator) {
    std::cerr << "floe-esphome-sim: " << simulator.error().to_string() << "\n";
    return 1;
  }
  std::cout << (*simulator)->ports_json() << std::endl;
  auto r = (*simulator)->run();
  if (!r) {
    spdlog::error("{}", r.error().to_string());
    return 1;
  }
  return 0;
}
