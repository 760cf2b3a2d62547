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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Gatehouse: TLS-terminating reverse proxy and load balancer for mail namespaces"};
  app.set_version_flag("--version", std::string("gatehouse ") + GATEHOUSE_VERSION);
  app.require_subcommand(0, 1);

  std::string config_file;
  auto* run = app.add_subcommand("run", "Serve with a config; SIGHUP reloads, SIGTERM/SIGINT drain then exit");
  run->add_option("-c,--config", config_file, "Config file (TOML)")->required()->check(CLI::ExistingFile);

  std::uint16_t demo_port = 8443;
  auto* demo = app.add_subcommand("demo", "Serve the embedded demo on loopback with self-signed certificates");
  demo->add_option("--port", demo_port, "First port: l7 on PORT, l4 on PORT+1, admin on PORT+2 (0: any free ports)");

  bool strict = false;
  auto* check = app.add_subcommand("check", "Validate config and certificates; report certificate coverage");
  check->add_option("-c,--config", config_file, "Config file (TOML)")->required()->check(CLI::ExistingFile);
  check->add_flag("--strict", strict, "Exit 2 when there are warnings");

  auto* cert = app.add_subcommand("cert", "Certificate tools");
  cert->require_subcommand(0, 1);
  sni::NewCertificateOptions new_options;
  std::string out_prefix;
  std::string not_before;
  auto* cert_new = cert->add_subcommand("new", "Self-signed certificate (like Exchange's default) or a CSR");
  cert_new->add_option("--cn", new_options.common_name, "Subject common name")->required();
  cert_new->add_option("--san", new_options.sans, "DNS subject alternative name (repeatable); default: the CN");
  cert_new->add_option("--key", new_options.key, "Key type")
      ->check(CLI::IsMember({"rsa2048", "rsa3072", "ec256", "ec384"}));
  cert_new->add_option("--days", new_options.days, "Validity in days (default 5 years)")->check(CLI::PositiveNumber);
  cert_new->add_option("--not-before", not_before, "Start of validity, YYYY-MM-DD (default: now)");
  cert_new->add_flag("--csr", new_options.csr, "Write a CSR for a CA instead of a self-signed certificate");
  cert_new->add_option("--out", out_prefix, "Writes PREFIX.crt (or .csr) and PREFIX.key")->required();

  std::vector<std::string> inspect_files;
  bool inspect_as_json = false;
  auto* cert_inspect = cert->add_subcommand("inspect", "Exchange-style properties of certificates");
  cert_inspect->add_option("files", inspect_files, "PEM files")->required()->check(CLI::ExistingFile);
  cert_inspect->add_flag("--json", inspect_as_json, "JSON output");

  std::string pin_target;
  std::string pin_sni;
  auto* cert_pin = cert->add_subcommand("pin", "Show the certificate a server presents, ready to pin");
  cert_pin->add_option("target", pin_target, "HOST:PORT")->required();
  cert_pin->add_option("--sni", pin_sni, "Server name to send (default: HOST)");

  bench::HandshakeOptions bench_options;
  auto* bench_cmd = app.add_subcommand("bench", "Benchmarks");
  bench_cmd->require_subcommand(0, 1);
  auto* bench_handshake = bench_cmd->add_subcommand(
      "handshake",
      "TLS handshake load generator against any TLS server (no HTTP): full or resumed handshakes, "
      "handshakes/s, latency, errors, and the server's CPU per handshake");
  bench_handshake->add_option("--target", bench_options.target, "HOST:PORT of the TLS server")->required();
  bench_handshake->add_option("--sni", bench_options.sni, "Server names to send, rotated (default: HOST unless an IP)")
      ->delimiter(',');
  bench_handshake->add_option("--concurrency", bench_options.concurrency, "Connections in flight")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  bench_handshake->add_option("--threads", bench_options.threads, "Client threads (each runs its share of the loops)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  auto* bench_duration = bench_handshake->add_option("--duration", bench_options.duration, "How long to run, e.g. 10s")
                             ->capture_default_str();
  auto* bench_count =
      bench_handshake->add_option("--count", bench_options.count, "Number of connections instead of a duration")
          ->check(CLI::PositiveNumber);
  bench_duration->excludes(bench_count);
  bench_handshake->add_option("--resume", bench_options.resume, "never: full handshakes only; always: resumed only")
      ->check(CLI::IsMember({"never", "always"}))
      ->capture_default_str();
  bench_handshake->add_option("--tls", bench_options.tls, "Pin the TLS version (default: 1.2 or 1.3, server's choice)")
      ->check(CLI::IsMember({"1.2", "1.3"}));
  bench_handshake
      ->add_option("--sig", bench_options.sig, "Signature algorithms offered, so the certificate type served")
      ->check(CLI::IsMember({"ecdsa", "rsa", "any"}))
      ->capture_default_str();
  bench_handshake
      ->add_option("--server-pid", bench_options.server_pids,
                   "Server process(es) whose CPU time per handshake to report (from /proc/PID/stat)")
      ->delimiter(',');
  bench_handshake->add_option("--json", bench_options.json_file, "Also write the results as JSON to FILE");
  bench_handshake->add_option("--timeout", bench_options.timeout, "Per connection, connect through handshake")
      ->capture_default_str();

  std::string help_topic;
  auto* help = app.add_subcommand("help", "Show help for a command");
  help->add_option("command", help_topic, "Command");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  // A bare `gatehouse` or `gatehouse cert` shows what there is to run.
  for (CLI::App* level : {&app, cert, bench_cmd}) {
    if ((level == &app || level->parsed()) && level->get_subcommands().empty()) {
      std::cerr << app.get_formatter()->make_help(level, level == &app ? "" : level->get_name(),
                                                  CLI::AppFormatMode::Normal);
      return 1;
    }
  }

  try {
    if (*help) {
      if (help_topic.empty()) {
        std::cout << app.get_formatter()->make_help(&app, "", CLI::AppFormatMode::Normal);
      } else {
        CLI::App* sub = nullptr;
        try {
          sub = app.get_subcommand(help_topic);
        } catch (const CLI::OptionNotFound&) {}
        if (sub == nullptr) {
          std::cerr << "gatehouse help: unknown command \"" << help_topic
                    << "\"; commands: run, demo, check, cert, bench\n";
          return 1;
        }
        std::cout << sub->help();
      }
      return 0;
    }
    if (*run) return run_command(config_file);
    if (*demo) return proxy::run_demo({demo_port});
    if (*check) return sni::run_check(config_file, strict, std::cout, std::cerr);
    if (*cert_new) {
      if (!not_before.empty()) {
        new_options.not_before = parse_date(not_before);
        if (!new_options.not_before) {
          std::cerr << "cert new: --not-before \"" << not_before << "\" is not a date like 2026-01-31\n";
          return 1;
        }
      }
      for (const auto& path : sni::write_certificate(new_options, out_prefix))
        std::cout << "wrote " << path.string() << "\n";
      return 0;
    }
    if (*cert_inspect) {
      if (inspect_as_json) {
        boost::json::array all;
        for (const auto& f : inspect_files) all.push_back(sni::inspect_json(f));
        std::cout << boost::json::serialize(all) << "\n";
      } else {
        for (const auto& f : inspect_files) sni::inspect_text(f, std::cout);
      }
      return 0;
    }
    if (*cert_pin) return proxy::cert_pin(pin_target, pin_sni, std::cout, std::cerr);
    if (*bench_handshake) return bench::run_handshake_bench(bench_options, std::cout, std::cerr);
  } catch (const std::exception& e) {
    std::cerr << "gatehouse: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
