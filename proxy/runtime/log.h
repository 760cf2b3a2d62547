#pragma once
// Logs are one JSON object per line. Events (errors, state changes: health,
// reload, pin mismatch, listening) go to stderr; the access log goes where
// [global] access_log says. Each line is written with one write(2), so lines
// from several workers never interleave.

#include <boost/json/object.hpp>

#include <filesystem>
#include <string>
#include <string_view>

namespace gatehouse::proxy::log {

// level: "info", "warning", "error".
void event(std::string_view level, std::string_view name, boost::json::object fields = {});
inline void info(std::string_view name, boost::json::object fields = {}) { event("info", name, std::move(fields)); }
inline void warning(std::string_view name, boost::json::object fields = {}) {
  event("warning", name, std::move(fields));
}
inline void error(std::string_view name, boost::json::object fields = {}) { event("error", name, std::move(fields)); }

// No events from now on (the fuzz targets, which run the proxy's code
// millions of times and read only the sanitizers' reports).
void mute_events();

// "-" = stdout, "" = none, else a file opened for append. Throws
// std::runtime_error naming the file when it cannot be opened.
void set_access_log(const std::string& destination);
void access(boost::json::object fields);
// False when access_log = "": callers skip building the line.
bool access_enabled();

// RFC 3339 UTC with milliseconds.
std::string now_rfc3339();

}  // namespace gatehouse::proxy::log
