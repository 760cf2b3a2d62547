// The config loader and validator on arbitrary text: conf::load_string is
// what load_file (gatehouse run, check, reload) calls once the file is read.
// The file name points into a directory that does not exist, so relative
// paths (certificates, ca, ticket_keys) name nothing on this machine.

#include <cstdint>
#include <string_view>

#include "conf/config.h"
#include "tests/fuzz/fuzz_check.h"

using gatehouse::fuzz::expect;
namespace conf = gatehouse::conf;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const conf::LoadResult result = conf::load_string(text, "/nonexistent-gatehouse-fuzz/gatehouse.toml");
  expect(result.config.has_value() == result.errors.empty(), "a config is returned exactly when there is no error");
  for (const auto& d : result.errors) {
    expect(!d.message.empty(), "every error says what is wrong");
    expect(d.file == "/nonexistent-gatehouse-fuzz/gatehouse.toml", "every error names the file");
    (void)d.to_string();
  }
  for (const auto& d : result.warnings) (void)d.to_string();
  if (result.config) {
    // What the rest of the program looks up by name must be there.
    for (const auto& listener : result.config->listeners) {
      for (const auto& name : listener.certificates)
        expect(result.config->find_certificate(name) != nullptr, "a listener's certificates exist");
      if (!listener.pool.empty())
        expect(result.config->find_pool(listener.pool) != nullptr, "a listener's pool exists");
    }
    for (const auto& route : result.config->routes) {
      expect(result.config->find_listener(route.listener) != nullptr, "a route's listener exists");
      expect(result.config->find_pool(route.pool) != nullptr, "a route's pool exists");
    }
    for (const auto& pool : result.config->pools)
      for (const auto& name : pool.servers)
        expect(result.config->find_server(name) != nullptr, "a pool's servers exist");
  }

  // The single-value parsers, on the whole text and on its first line.
  const std::string_view line = text.substr(0, text.find('\n'));
  for (std::string_view s : {text, line}) {
    (void)conf::parse_duration(s);
    if (auto address = conf::parse_address(s)) {
      const auto again = conf::parse_address(address->to_string());
      expect(again && *again == *address, "an address reads back as itself from its text");
    }
  }
  return 0;
}
