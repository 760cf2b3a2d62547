#include "proxy/l7/deny.h"

#include <boost/algorithm/string/predicate.hpp>

#include <string>

#include "proxy/http/request_path.h"
#include "proxy/runtime/log.h"
#include "sni/hostname.h"

namespace gatehouse::proxy::l7 {

namespace {

bool host_applies(const conf::DenyRule& rule, std::string_view host) {
  if (rule.hosts.empty()) return true;
  for (const auto& pattern : rule.hosts)
    if (pattern == host || sni::host_matches(pattern, host)) return true;
  return false;
}

bool path_applies(const conf::DenyRule& rule, std::string_view path) {
  if (rule.paths.empty()) return true;
  for (const auto& prefix : rule.paths)
    if (path.starts_with(prefix) &&
        (prefix.back() == '/' || path.size() == prefix.size() || path[prefix.size()] == '/'))
      return true;
  return false;
}

bool url_applies(const DenyRuntime& rule, std::string_view path, std::string_view target) {
  if (!rule.url) return true;
  const auto mark = target.find('?');
  if (mark == std::string_view::npos) return RE2::PartialMatch(path, *rule.url);
  const std::string_view query = target.substr(mark + 1);
  const std::string as_sent = std::string(path) + "?" + std::string(query);
  return RE2::PartialMatch(as_sent, *rule.url) ||
         RE2::PartialMatch(std::string(path) + "?" + http::percent_decoded(query), *rule.url);
}

bool header_applies(const DenyRuntime& rule, const http::Fields& fields) {
  if (!rule.header) return true;
  for (const auto& field : fields)
    if (boost::iequals(field.name, rule.config->header_name) && RE2::PartialMatch(field.value, *rule.header))
      return true;
  return false;
}

}  // namespace

const DenyRuntime* matching_deny_rule(const Generation& generation, const ListenerRuntime& listener,
                                      std::string_view host, std::string_view path, std::string_view target,
                                      const http::Fields& fields) {
  for (const auto& rule : generation.deny_rules()) {
    const conf::DenyRule& config = *rule->config;
    if (!config.listener.empty() && config.listener != listener.config->name) continue;
    if (host_applies(config, host) && path_applies(config, path) && url_applies(*rule, path, target) &&
        header_applies(*rule, fields))
      return rule.get();
  }
  return nullptr;
}

const DenyRuntime* refuse_by_deny_rule(const Generation& generation, const ListenerRuntime& listener,
                                       std::string_view client, std::string_view host, std::string_view path,
                                       std::string_view target, const http::Fields& fields) {
  const DenyRuntime* rule = matching_deny_rule(generation, listener, host, path, target, fields);
  if (rule == nullptr) return nullptr;
  rule->hits.fetch_add(1, std::memory_order_relaxed);
  log::warning("request_denied", {{"listener", listener.config->name},
                                  {"client", client},
                                  {"host", host},
                                  {"path", target},
                                  {"rule", rule->number},
                                  {"line", rule->config->line}});
  return rule;
}

}  // namespace gatehouse::proxy::l7
