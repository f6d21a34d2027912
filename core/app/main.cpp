// floe-core: parse arguments, load the config, run the daemon.
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "floe/core/config.hpp"
#include "floe/core/daemon.hpp"

int main(int argc, char** argv) {
  CLI::App cli{"floe-core: the floe daemon (device tree, queries, watchers, providers and clients)"};
  std::string config_path, socket_dir, log_level;
  cli.add_option("--config", config_path, "TOML config file (docs/CORE.md); defaults apply without one");
  cli.add_option("--socket-dir", socket_dir, "Directory of provider.sock and client.sock (overrides the config)");
  cli.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical, off (overrides the config)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "warning", "error", "critical", "off"}));
  CLI11_PARSE(cli, argc, argv);

  floe::Result<floe::core::Config> cfg = config_path.empty() ? floe::core::Config{} : floe::core::load_config(config_path);
  if (!cfg) {
    std::fprintf(stderr, "floe-core: %s\n", cfg.error().message.c_str());
    return 2;
  }
  if (!socket_dir.empty()) cfg->socket_dir = socket_dir;
  if (!log_level.empty()) cfg->log_level = log_level;
  floe::core::resolve_defaults(*cfg);
  spdlog::set_level(spdlog::level::from_str(cfg->log_level == "warn" ? "warning" : cfg->log_level));
  return floe::core::App{*cfg}.run();
}
