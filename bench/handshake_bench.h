#pragma once
// `gatehouse bench handshake`: a TLS handshake load generator that works
// against any TLS server (Gatehouse, HAProxy, nginx ...). N connection loops
// on Asio, each: TCP connect, TLS handshake, close_notify, close -- no HTTP.
// Every connection is checked full or resumed as asked; a run that asked for
// resumption and got full handshakes says so loudly and fails. With a server
// pid it reads the server's CPU time from /proc and reports CPU microseconds
// per handshake, the figure that compares servers fairly (the client, which
// verifies every signature, is usually the slower side).

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace gatehouse::bench {

struct HandshakeOptions {
  std::string target;            // HOST:PORT
  std::vector<std::string> sni;  // rotated per connection; empty = HOST unless it is an IP literal
  int concurrency = 32;          // connection loops in flight
  int threads = 1;               // each thread runs its share of the loops on its own io_context
  std::string duration = "10s";  // used when count == 0
  std::uint64_t count = 0;       // number of connection attempts; 0 = run for `duration`
  std::string resume = "never";  // "never" | "always"
  std::string tls;               // "" (1.2 or 1.3, server's choice) | "1.2" | "1.3"
  std::string sig = "any";       // "any" | "ecdsa" | "rsa": signature algorithms offered
  std::vector<int> server_pids;  // processes whose CPU time is the server's
  std::string json_file;         // "" = none
  std::string timeout = "10s";   // per connection, connect through handshake
};

// Runs the benchmark; prints the progress line (when `err` is a terminal) and
// warnings on `err`, the final table on `out`. Exit codes: 0 ok; 1 bad input
// or no handshake succeeded; 3 the server did not do what was asked
// (resumption refused, or a certificate type other than --sig asked for).
int run_handshake_bench(const HandshakeOptions& options, std::ostream& out, std::ostream& err);

}  // namespace gatehouse::bench
