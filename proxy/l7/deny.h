#pragma once
// The emergency [[deny]] rules: a request is checked against them before it
// is forwarded, on the path as routing reads it (http::normalize_path), so a
// rule about "/ecp" holds for every spelling of it. Pure: no I/O.

#include <string_view>

#include "proxy/http/http_message.h"
#include "proxy/runtime/generation.h"

namespace gatehouse::proxy::l7 {

// The first rule of `generation` (file order) that applies to `listener`
// and whose every condition holds, or null. `host` and `path` are
// normalised; `target` is the request target as sent (its query is matched
// both as sent and percent-decoded, so an encoding does not slip past a
// rule written in plain characters).
const DenyRuntime* matching_deny_rule(const Generation& generation, const ListenerRuntime& listener,
                                      std::string_view host, std::string_view path, std::string_view target,
                                      const http::Fields& fields);

// matching_deny_rule(), and when one matches: counts the hit and logs
// `request_denied` with the client, host, target and rule. Null when none.
const DenyRuntime* refuse_by_deny_rule(const Generation& generation, const ListenerRuntime& listener,
                                       std::string_view client, std::string_view host, std::string_view path,
                                       std::string_view target, const http::Fields& fields);

}  // namespace gatehouse::proxy::l7
