#include "floe/ipc/protobuf_log.hpp"

#include <google/protobuf/stubs/logging.h>
#include <spdlog/spdlog.h>

#include <string>

namespace floe::ipc {
namespace {

void to_spdlog(google::protobuf::LogLevel level, const char* file, int line, const std::string& message) {
  if (level == google::protobuf::LOGLEVEL_FATAL) {
    spdlog::critical("protobuf: {} ({}:{})", message, file, line);
  } else {
    spdlog::debug("protobuf: {} ({}:{})", message, file, line);
  }
}

}  // namespace

void route_protobuf_logs_to_spdlog() { google::protobuf::SetLogHandler(&to_spdlog); }

}  // namespace floe::ipc
