// gatehouse: command-line entry point. Parses flags with CLI11 and dispatches;
// each command's logic lives where its knowledge lives.

#include <CLI/CLI.hpp>

#include <boost/json/serialize.hpp>

#include <iostream>

#include "bench/handshake_bench.h"
#include "conf/config.h"
#include "proxy/app/cert_pin.h"
#include "proxy/app/demo.h"
#include "proxy/app/server.h"
#include "sni/tooling.h"

namespace {

using namespace gatehouse;

int run_command(const std::string& file) {
  conf::LoadResult loaded = conf::load_file(file);
  for (const auto& w : loaded.warnings) std::cerr << "warning: " << w.to_string() << "\n";
  if (!loaded.ok()) {
    for (const auto& e : loaded.errors) std::cerr << e.to_string() << "\n";
    std::cerr << "gatehouse: " << loaded.errors.size() << " error(s) in " << file
              << "; nothing started (gatehouse check -c " << file << " shows the full report)\n";
    return 1;
  }
  proxy::Server server(std::move(*loaded.config));
  return server.run();
}

std::optional<sni::Clock::time_point> parse_date(const std::string& text) {
  std::tm tm{};
  if (strptime(text.c_str(), "%Y-%m-%d", &tm) == nullptr) return std::nullopt;
  return sni::Clock::from_time_t(timegm(&tm));
}

// Each command holds the values its flags fill in (CLI11 writes through
// references to them, so a command must stay where it was added) and the
// subcommand, which says whether it was given.

struct RunCommand {
  CLI::App* app = nullptr;
  std::string config_file;
};

void add_run(CLI::App& app, RunCommand& run) {
  run.app = app.add_subcommand("run", "Serve with a config; SIGHUP reloads, SIGTERM/SIGINT drain then exit");
  run.app->add_option("-c,--config", run.config_file, "Config file (TOML)")->required()->check(CLI::ExistingFile);
}

struct DemoCommand {
  CLI::App* app = nullptr;
  std::uint16_t port = 8443;
};

void add_demo(CLI::App& app, DemoCommand& demo) {
  demo.app = app.add_subcommand("demo", "Serve the embedded demo on loopback with self-signed certificates");
  demo.app->add_option("--port", demo.port,
                       "First port: l7 on PORT, l4 on PORT+1, admin on PORT+2 "
                       "(0: any free ports)");
}

struct CheckCommand {
  CLI::App* app = nullptr;
  std::string config_file;
  sni::CheckOptions options;
};

void add_check(CLI::App& app, CheckCommand& check) {
  check.app = app.add_subcommand("check", "Validate config and certificates; report certificate coverage");
  check.app->add_option("-c,--config", check.config_file, "Config file (TOML)")->required()->check(CLI::ExistingFile);
  check.app->add_flag("--exchange", check.options.exchange,
                      "Also warn about what Exchange needs: idle_timeout of at least 15m for ActiveSync, RPC and "
                      "MAPI long polls, /ecp and /powershell kept to allowed ranges, autodiscover.DOMAIN hosts "
                      "on a certificate, health probes on /VDIR/healthcheck.htm rather than /, h2 offered beside "
                      "Windows logins (the Extended Protection certificate check always runs)");
  check.app->add_flag("--strict", check.options.strict, "Exit 2 when there are warnings");
}

struct CertNewCommand {
  CLI::App* app = nullptr;
  sni::NewCertificateOptions options;
  std::string out_prefix;
  std::string not_before;  // YYYY-MM-DD, checked when the command runs
};

void add_cert_new(CLI::App& cert, CertNewCommand& command) {
  command.app = cert.add_subcommand("new", "Self-signed certificate (like Exchange's default) or a CSR");
  auto& options = command.options;
  command.app->add_option("--cn", options.common_name, "Subject common name")->required();
  command.app->add_option("--san", options.sans, "DNS subject alternative name (repeatable); default: the CN");
  command.app->add_option("--key", options.key, "Key type")
      ->check(CLI::IsMember({"rsa2048", "rsa3072", "ec256", "ec384"}));
  command.app->add_option("--days", options.days, "Validity in days (default 5 years)")->check(CLI::PositiveNumber);
  command.app->add_option("--not-before", command.not_before, "Start of validity, YYYY-MM-DD (default: now)");
  command.app->add_flag("--csr", options.csr, "Write a CSR for a CA instead of a self-signed certificate");
  command.app->add_option("--out", command.out_prefix, "Writes PREFIX.crt (or .csr) and PREFIX.key")->required();
}

struct CertInspectCommand {
  CLI::App* app = nullptr;
  std::vector<std::string> files;
  bool as_json = false;
};

void add_cert_inspect(CLI::App& cert, CertInspectCommand& command) {
  command.app = cert.add_subcommand("inspect", "Exchange-style properties of certificates");
  command.app->add_option("files", command.files, "PEM files")->required()->check(CLI::ExistingFile);
  command.app->add_flag("--json", command.as_json, "JSON output");
}

struct CertPinCommand {
  CLI::App* app = nullptr;
  std::string target;
  std::string sni;
};

void add_cert_pin(CLI::App& cert, CertPinCommand& command) {
  command.app = cert.add_subcommand("pin", "Show the certificate a server presents, ready to pin");
  command.app->add_option("target", command.target, "HOST:PORT")->required();
  command.app->add_option("--sni", command.sni, "Server name to send (default: HOST)");
}

struct CertCommands {
  CLI::App* app = nullptr;
  CertNewCommand new_certificate;
  CertInspectCommand inspect;
  CertPinCommand pin;
};

void add_cert(CLI::App& app, CertCommands& cert) {
  cert.app = app.add_subcommand("cert", "Certificate tools");
  cert.app->require_subcommand(0, 1);
  add_cert_new(*cert.app, cert.new_certificate);
  add_cert_inspect(*cert.app, cert.inspect);
  add_cert_pin(*cert.app, cert.pin);
}

struct BenchCommands {
  CLI::App* app = nullptr;
  CLI::App* handshake = nullptr;
  bench::HandshakeOptions handshake_options;
};

void add_bench_handshake(CLI::App& bench, BenchCommands& command) {
  command.handshake = bench.add_subcommand("handshake",
                                           "TLS handshake load generator against any TLS server (no HTTP): full or "
                                           "resumed handshakes, "
                                           "handshakes/s, latency, errors, and the server's CPU per handshake");
  CLI::App& handshake = *command.handshake;
  auto& options = command.handshake_options;
  handshake.add_option("--target", options.target, "HOST:PORT of the TLS server")->required();
  handshake.add_option("--sni", options.sni, "Server names to send, rotated (default: HOST unless an IP)")
      ->delimiter(',');
  handshake.add_option("--concurrency", options.concurrency, "Connections in flight")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  handshake.add_option("--threads", options.threads, "Client threads (each runs its share of the loops)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  auto* duration =
      handshake.add_option("--duration", options.duration, "How long to run, e.g. 10s")->capture_default_str();
  auto* count = handshake.add_option("--count", options.count, "Number of connections instead of a duration")
                    ->check(CLI::PositiveNumber);
  duration->excludes(count);
  handshake.add_option("--resume", options.resume, "never: full handshakes only; always: resumed only")
      ->check(CLI::IsMember({"never", "always"}))
      ->capture_default_str();
  handshake.add_option("--tls", options.tls, "Pin the TLS version (default: 1.2 or 1.3, server's choice)")
      ->check(CLI::IsMember({"1.2", "1.3"}));
  handshake.add_option("--sig", options.sig, "Signature algorithms offered, so the certificate type served")
      ->check(CLI::IsMember({"ecdsa", "rsa", "any"}))
      ->capture_default_str();
  handshake
      .add_option("--server-pid", options.server_pids,
                  "Server process(es) whose CPU time per handshake to report "
                  "(from /proc/PID/stat)")
      ->delimiter(',');
  handshake.add_option("--json", options.json_file, "Also write the results as JSON to FILE");
  handshake.add_option("--timeout", options.timeout, "Per connection, connect through handshake")
      ->capture_default_str();
}

void add_bench(CLI::App& app, BenchCommands& bench) {
  bench.app = app.add_subcommand("bench", "Benchmarks");
  bench.app->require_subcommand(0, 1);
  add_bench_handshake(*bench.app, bench);
}

struct HelpCommand {
  CLI::App* app = nullptr;
  std::string topic;
};

void add_help(CLI::App& app, HelpCommand& help) {
  help.app = app.add_subcommand("help", "Show help for a command");
  help.app->add_option("command", help.topic, "Command");
}

struct Commands {
  RunCommand run;
  DemoCommand demo;
  CheckCommand check;
  CertCommands cert;
  BenchCommands bench;
  HelpCommand help;
};

// In the order `gatehouse --help` lists them.
void add_commands(CLI::App& app, Commands& commands) {
  add_run(app, commands.run);
  add_demo(app, commands.demo);
  add_check(app, commands.check);
  add_cert(app, commands.cert);
  add_bench(app, commands.bench);
  add_help(app, commands.help);
}

// A bare `gatehouse` or `gatehouse cert` shows what there is to run; true
// when it did.
bool showed_menu(CLI::App& app, const Commands& commands) {
  for (CLI::App* level : {&app, commands.cert.app, commands.bench.app}) {
    if ((level == &app || level->parsed()) && level->get_subcommands().empty()) {
      std::cerr << app.get_formatter()->make_help(level, level == &app ? "" : level->get_name(),
                                                  CLI::AppFormatMode::Normal);
      return true;
    }
  }
  return false;
}

int show_help(CLI::App& app, const std::string& topic) {
  if (topic.empty()) {
    std::cout << app.get_formatter()->make_help(&app, "", CLI::AppFormatMode::Normal);
    return 0;
  }
  CLI::App* sub = nullptr;
  try {
    sub = app.get_subcommand(topic);
  } catch (const CLI::OptionNotFound&) {}
  if (sub == nullptr) {
    std::cerr << "gatehouse help: unknown command \"" << topic << "\"; commands: run, demo, check, cert, bench\n";
    return 1;
  }
  std::cout << sub->help();
  return 0;
}

int cert_new(const CertNewCommand& command) {
  sni::NewCertificateOptions options = command.options;
  if (!command.not_before.empty()) {
    options.not_before = parse_date(command.not_before);
    if (!options.not_before) {
      std::cerr << "cert new: --not-before \"" << command.not_before << "\" is not a date like 2026-01-31\n";
      return 1;
    }
  }
  for (const auto& path : sni::write_certificate(options, command.out_prefix))
    std::cout << "wrote " << path.string() << "\n";
  return 0;
}

int cert_inspect(const CertInspectCommand& command) {
  if (command.as_json) {
    boost::json::array all;
    for (const auto& f : command.files) all.push_back(sni::inspect_json(f));
    std::cout << boost::json::serialize(all) << "\n";
  } else {
    for (const auto& f : command.files) sni::inspect_text(f, std::cout);
  }
  return 0;
}

// Runs the one command given (CLI11 allows at most one per level).
int dispatch(CLI::App& app, const Commands& commands) {
  if (*commands.help.app) return show_help(app, commands.help.topic);
  if (*commands.run.app) return run_command(commands.run.config_file);
  if (*commands.demo.app) return proxy::run_demo(proxy::DemoOptions{.port = commands.demo.port});
  if (*commands.check.app)
    return sni::run_check(commands.check.config_file, commands.check.options, std::cout, std::cerr);
  if (*commands.cert.new_certificate.app) return cert_new(commands.cert.new_certificate);
  if (*commands.cert.inspect.app) return cert_inspect(commands.cert.inspect);
  if (*commands.cert.pin.app)
    return proxy::cert_pin(commands.cert.pin.target, commands.cert.pin.sni, std::cout, std::cerr);
  if (*commands.bench.handshake)
    return bench::run_handshake_bench(commands.bench.handshake_options, std::cout, std::cerr);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Gatehouse: TLS-terminating reverse proxy and load balancer for "
      "mail namespaces"};
  app.set_version_flag(
      "--version", std::string("gatehouse ") + GATEHOUSE_VERSION + "\nBoringSSL: " + GATEHOUSE_BORINGSSL_DESCRIPTION);
  app.require_subcommand(0, 1);
  Commands commands;
  add_commands(app, commands);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (showed_menu(app, commands)) return 1;
  try {
    return dispatch(app, commands);
  } catch (const std::exception& e) {
    std::cerr << "gatehouse: " << e.what() << "\n";
    return 1;
  }
}
