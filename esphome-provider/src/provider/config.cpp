#include "floe/esphome/config.hpp"

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "floe/esphome/transport.hpp"

namespace floe::esphome {
namespace {

constexpr std::string_view kOp = "config";

// yaml-cpp marks are 0-based; people count lines from 1.
int line_of(const YAML::Node& n) { return n.Mark().line + 1; }

tl::unexpected<Error> error_at(std::string_view origin, const YAML::Node& n, std::string_view what) {
  if (n.Mark().is_null()) return logic_error(kOp, fmt::format("{}: {}", origin, what));
  return logic_error(kOp, fmt::format("{}:{}: {}", origin, line_of(n), what));
}

/// What a node that is not the scalar expected is, for error messages.
std::string_view kind_of(const YAML::Node& n) {
  if (n.IsNull()) return "empty";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a map";
  return "a scalar";
}

/// yaml-cpp keeps both entries of a key written twice in one map (and a lookup sees the first):
/// a config that says two things is refused, naming both lines. A key without a value is refused
/// here too, on the key's line (an empty value's own mark is the line after it).
Result<void> check_keys(std::string_view origin, const YAML::Node& map) {
  std::map<std::string, int> seen;
  for (const auto& kv : map) {
    if (!kv.first.IsScalar()) continue;  // reported where the key is read
    if (kv.second.IsNull()) return error_at(origin, kv.first, fmt::format("'{}' has no value", kv.first.Scalar()));
    const auto [it, fresh] = seen.emplace(kv.first.Scalar(), line_of(kv.first));
    if (!fresh) {
      return error_at(origin, kv.first, fmt::format("'{}' is given twice (first on line {})", it->first, it->second));
    }
  }
  return {};
}

Result<std::string> get_string(std::string_view origin, std::string_view key, const YAML::Node& n) {
  if (!n.IsScalar()) return error_at(origin, n, fmt::format("'{}' must be a string", key));
  return n.Scalar();
}

Result<std::int64_t> get_int(std::string_view origin, std::string_view key, const YAML::Node& n, std::int64_t lo,
                             std::int64_t hi) {
  std::int64_t v = 0;
  if (!n.IsScalar() || !YAML::convert<std::int64_t>::decode(n, v)) {
    return error_at(origin, n, n.IsScalar() ? fmt::format("'{}' must be an integer, not '{}'", key, n.Scalar())
                                             : fmt::format("'{}' must be an integer, not {}", key, kind_of(n)));
  }
  if (v < lo || v > hi) return error_at(origin, n, fmt::format("'{}' = {} is out of range [{}, {}]", key, v, lo, hi));
  return v;
}

Result<std::chrono::milliseconds> get_ms(std::string_view origin, std::string_view key, const YAML::Node& n) {
  auto v = get_int(origin, key, n, 1, 3'600'000);
  if (!v) return tl::unexpected(v.error());
  return std::chrono::milliseconds(*v);
}

Result<std::vector<std::string>> get_groups(std::string_view origin, const YAML::Node& n) {
  std::vector<std::string> out;
  if (n.IsScalar()) {
    out.push_back(n.Scalar());
  } else if (n.IsSequence()) {
    for (const auto& g : n) {
      if (!g.IsScalar()) return error_at(origin, g, "each of 'groups' must be a string");
      out.push_back(g.Scalar());
    }
  } else {
    return error_at(origin, n, "'groups' must be a list of group names");
  }
  for (const auto& g : out) {
    if (!is_valid_id(g)) return error_at(origin, n, fmt::format("group '{}' must be 1..64 characters of [a-z0-9_.-]", g));
  }
  return out;
}

Result<void> parse_reconnect(std::string_view origin, const YAML::Node& n, Config& cfg) {
  if (!n.IsMap()) return error_at(origin, n, "'reconnect' must be a map with min_ms and max_ms");
  FLOE_TRY(check_keys(origin, n));
  for (const auto& kv : n) {
    const std::string key = kv.first.Scalar();
    if (key == "min_ms") {
      auto v = get_ms(origin, "reconnect.min_ms", kv.second);
      if (!v) return tl::unexpected(v.error());
      cfg.reconnect_min = *v;
    } else if (key == "max_ms") {
      auto v = get_ms(origin, "reconnect.max_ms", kv.second);
      if (!v) return tl::unexpected(v.error());
      cfg.reconnect_max = *v;
    } else {
      return error_at(origin, kv.first, fmt::format("unknown key 'reconnect.{}' (expected min_ms, max_ms)", key));
    }
  }
  if (cfg.reconnect_max < cfg.reconnect_min) {
    return error_at(origin, n, fmt::format("reconnect.max_ms ({}) is below reconnect.min_ms ({})",
                                           cfg.reconnect_max.count(), cfg.reconnect_min.count()));
  }
  return {};
}

Result<DeviceConfig> parse_device(std::string_view origin, const YAML::Node& n) {
  if (!n.IsMap()) return error_at(origin, n, "each device must be a map (host, port, name, encryption_key, groups)");
  FLOE_TRY(check_keys(origin, n));
  DeviceConfig d;
  d.line = line_of(n);
  bool has_host = false;
  for (const auto& kv : n) {
    const std::string key = kv.first.Scalar();
    const YAML::Node& v = kv.second;
    if (key == "host") {
      auto s = get_string(origin, key, v);
      if (!s) return tl::unexpected(s.error());
      if (s->empty()) return error_at(origin, v, "'host' is empty");
      d.host = *s;
      has_host = true;
    } else if (key == "port") {
      auto p = get_int(origin, key, v, 1, 65535);
      if (!p) return tl::unexpected(p.error());
      d.port = static_cast<std::uint16_t>(*p);
    } else if (key == "name") {
      auto s = get_string(origin, key, v);
      if (!s) return tl::unexpected(s.error());
      if (!is_valid_id(*s)) {
        return error_at(origin, v, fmt::format("name '{}' must be 1..64 characters of [a-z0-9_.-] (it is the floe device id)", *s));
      }
      d.name = *s;
    } else if (key == "encryption_key") {
      auto s = get_string(origin, key, v);
      if (!s) return tl::unexpected(s.error());
      auto psk = decode_psk(*s);
      if (!psk) {
        return error_at(origin, v, fmt::format("encryption_key is not a valid key (the 44-character base64 text of the "
                                               "device's api: encryption: key:): {}", psk.error().message));
      }
      d.psk = *psk;
    } else if (key == "groups") {
      auto g = get_groups(origin, v);
      if (!g) return tl::unexpected(g.error());
      d.groups = std::move(*g);
    } else {
      return error_at(origin, kv.first,
                      fmt::format("unknown device key '{}' (expected host, port, name, encryption_key, groups)", key));
    }
  }
  if (!has_host) return error_at(origin, n, "device without 'host'");
  return d;
}

}  // namespace

std::string DeviceConfig::address() const { return fmt::format("{}:{}", host, port); }

bool is_valid_id(std::string_view id) noexcept {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-')) return false;
  }
  return true;
}

std::string slugify(std::string_view name) {
  std::string out;
  bool gap = false;
  for (char c : name) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
    if (!ok) {
      gap = true;
      continue;
    }
    if (gap && !out.empty()) out += '_';
    gap = false;
    out += c;
  }
  if (out.size() > 64) out.resize(64);
  while (!out.empty() && (out.back() == '_' || out.back() == '.' || out.back() == '-')) out.pop_back();
  return out.empty() ? std::string("device") : out;
}

Result<Config> parse_config(std::string_view text, std::string_view origin) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return logic_error(kOp, fmt::format("{}:{}:{}: {}", origin, e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  if (!root.IsMap()) return logic_error(kOp, fmt::format("{}: expected a map with a 'devices' list", origin));

  Config cfg;
  bool has_devices = false;
  try {
    FLOE_TRY(check_keys(origin, root));
    for (const auto& kv : root) {
      const std::string key = kv.first.Scalar();
      const YAML::Node& v = kv.second;
      if (key == "name") {
        auto s = get_string(origin, key, v);
        if (!s) return tl::unexpected(s.error());
        if (s->empty()) return error_at(origin, v, "'name' is empty");
        cfg.name = *s;
      } else if (key == "socket_dir") {
        auto s = get_string(origin, key, v);
        if (!s) return tl::unexpected(s.error());
        cfg.socket_dir = *s;
      } else if (key == "request_timeout_ms") {
        auto ms = get_ms(origin, key, v);
        if (!ms) return tl::unexpected(ms.error());
        cfg.request_timeout = *ms;
      } else if (key == "keepalive_ms") {
        auto ms = get_ms(origin, key, v);
        if (!ms) return tl::unexpected(ms.error());
        cfg.keepalive = *ms;
      } else if (key == "reconnect") {
        FLOE_TRY(parse_reconnect(origin, v, cfg));
      } else if (key == "devices") {
        if (!v.IsSequence()) return error_at(origin, v, "'devices' must be a list");
        has_devices = true;
        for (const auto& dn : v) {
          auto d = parse_device(origin, dn);
          if (!d) return tl::unexpected(d.error());
          cfg.devices.push_back(std::move(*d));
        }
      } else {
        return error_at(origin, kv.first,
                        fmt::format("unknown key '{}' (expected name, socket_dir, request_timeout_ms, keepalive_ms, "
                                    "reconnect, devices)", key));
      }
    }
  } catch (const YAML::Exception& e) {
    // A non-scalar map key, for instance: yaml-cpp throws from Scalar() on it.
    return logic_error(kOp, fmt::format("{}:{}: {}", origin, e.mark.line + 1, e.msg));
  }
  if (!has_devices) return logic_error(kOp, fmt::format("{}: no 'devices' list", origin));

  std::set<std::string> names, addresses;
  for (const auto& d : cfg.devices) {
    if (!d.name.empty() && !names.insert(d.name).second) {
      return logic_error(kOp, fmt::format("{}:{}: device name '{}' is used twice", origin, d.line, d.name));
    }
    if (!addresses.insert(d.address()).second) {
      return logic_error(kOp, fmt::format("{}:{}: device {} is listed twice", origin, d.line, d.address()));
    }
  }
  return cfg;
}

Result<Config> load_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) return sys_errorf(kOp, "cannot read {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path);
}

}  // namespace floe::esphome
