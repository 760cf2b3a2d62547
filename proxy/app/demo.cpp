#include "proxy/app/demo.h"

#include <stdlib.h>

#include <fstream>
#include <iostream>

#include "conf/config.h"
#include "proxy/app/demo_backend.h"
#include "proxy/app/server.h"
#include "proxy/runtime/connection.h"
#include "sni/certificate.h"
#include "sni/tooling.h"

namespace gatehouse::proxy {

namespace {

std::filesystem::path make_demo_dir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "gatehouse-demo-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("demo: cannot create a temporary directory in /tmp");
  return pattern;
}

std::filesystem::path new_cert(const std::filesystem::path& dir, const std::string& file, const std::string& cn,
                               std::vector<std::string> sans, const std::string& key) {
  sni::NewCertificateOptions options;
  options.common_name = cn;
  options.sans = std::move(sans);
  options.key = key;
  sni::write_certificate(options, dir / file);
  return dir / file;
}

}  // namespace

int run_demo(const DemoOptions& options) {
  const auto dir = make_demo_dir();
  const std::vector<std::string> names = {"mail.contoso.test", "autodiscover.contoso.test", "*.contoso.test"};
  new_cert(dir, "contoso-ecdsa", "mail.contoso.test", names, "ec256");
  new_cert(dir, "contoso-rsa", "mail.contoso.test", names, "rsa2048");
  // Like Exchange's default certificate: CN = the server's name, RSA 2048, self-signed.
  new_cert(dir, "mbx01", "MBX01", {"mbx01.contoso.test"}, "rsa2048");
  new_cert(dir, "mbx02", "MBX02", {"mbx02.contoso.test"}, "rsa2048");

  DemoBackends backends(
      {{"MBX01", dir / "mbx01.crt", dir / "mbx01.key", {}}, {"MBX02", dir / "mbx02.crt", dir / "mbx02.key", {}}});
  auto pin_of = [&](const std::string& stem) {
    auto certs = sni::read_certificates(dir / (stem + ".crt"));
    return std::move(certs.front());
  };
  const std::string pin1 = sni::thumbprint(pin_of("mbx01").get());  // Exchange-style thumbprint
  const std::string pin2 = sni::spki_pin(pin_of("mbx02").get());    // SPKI pin
  const int l7_port = options.port;
  const int l4_port = options.port == 0 ? 0 : options.port + 1;
  const int admin_port = options.port == 0 ? 0 : options.port + 2;

  const auto config_file = dir / "gatehouse.toml";
  {
    std::ofstream toml(config_file);
    toml << "# Written by `gatehouse demo`.\n"
         << "[global]\nworkers = 0\nadmin = \"127.0.0.1:" << admin_port
         << "\"\naccess_log = \"-\"\ndrain_timeout = \"2s\"\n\n"
         << "[[certificate]]\nname = \"contoso-ecdsa\"\ncert = \"contoso-ecdsa.crt\"\nkey = \"contoso-ecdsa.key\"\n\n"
         << "[[certificate]]\nname = \"contoso-rsa\"\ncert = \"contoso-rsa.crt\"\nkey = \"contoso-rsa.key\"\n\n"
         << "[[listener]]\nname = \"mail\"\nbind = \"127.0.0.1:" << l7_port << "\"\nmode = \"l7\"\n\n"
         << "[[route]]\nlistener = \"mail\"\nhosts = [\"mail.contoso.test\"]\npaths = [\"/owa\", \"/ecp\"]\n"
         << "pool = \"owa\"\n\n"
         << "[[route]]\nlistener = \"mail\"\nhosts = [\"mail.contoso.test\"]\npaths = [\"/mapi\", \"/EWS\", "
         << "\"/Microsoft-Server-ActiveSync\", \"/rpc\", \"/OAB\"]\npool = \"mapi\"\nidle_timeout = \"65m\"\n\n"
         << "[[route]]\nlistener = \"mail\"\nhosts = [\"autodiscover.contoso.test\", \"*.contoso.test\"]\n"
         << "pool = \"mailbox\"\n\n"
         << "[[listener]]\nname = \"mail-l4\"\nbind = \"127.0.0.1:" << l4_port << "\"\nmode = \"l4\"\n"
         << "pool = \"mailbox\"\n\n"
         << "[[server]]\nname = \"mbx01\"\naddress = \"" << backends.backends()[0].endpoint.address().to_string() << ":"
         << backends.backends()[0].endpoint.port() << "\"\nsite = \"dc1\"\nserver_name = \"mbx01.contoso.test\"\n"
         << "pin = \"" << pin1 << "\"\n\n"
         << "[[server]]\nname = \"mbx02\"\naddress = \"" << backends.backends()[1].endpoint.address().to_string() << ":"
         << backends.backends()[1].endpoint.port() << "\"\nsite = \"dc1\"\nserver_name = \"mbx02.contoso.test\"\n"
         << "pin = \"" << pin2 << "\"\n\n"
         << "[[pool]]\nname = \"mailbox\"\nservers = [\"mbx01\", \"mbx02\"]\nbalance = \"round_robin\"\ntls = "
            "\"verify\"\n\n"
         << "[[pool]]\nname = \"owa\"\nservers = [\"mbx01\"]\ntls = \"verify\"\n\n"
         << "[[pool]]\nname = \"mapi\"\nservers = [\"mbx02\"]\ntls = \"verify\"\n";
  }
  conf::LoadResult loaded = conf::load_file(config_file);
  if (!loaded.ok()) {
    for (const auto& d : loaded.errors) std::cerr << d.to_string() << "\n";
    return 1;
  }
  Server server(std::move(*loaded.config));
  return server.run([&](Server& s) {
    const auto l4 = s.bound("mail-l4");
    const std::string port = std::to_string(l4.port());
    const std::string web = std::to_string(s.bound("mail").port());
    const std::string ca = (dir / "contoso-ecdsa.crt").string();
    std::cout << "\nGatehouse demo is serving. Files and config: " << config_file.string() << "\n\n"
              << "  L7 (HTTP/1.1 and HTTP/2; /owa goes to MBX01, /mapi to MBX02):\n"
              << "    curl --http1.1 --resolve mail.contoso.test:" << web << ":127.0.0.1 --cacert " << ca
              << " https://mail.contoso.test:" << web << "/owa/\n"
              << "    curl --http2 --resolve mail.contoso.test:" << web << ":127.0.0.1 --cacert " << ca
              << " https://mail.contoso.test:" << web << "/mapi/emsmdb/\n\n"
              << "  L4 (TLS terminated, re-encrypted to pinned self-signed mailbox servers):\n"
              << "    curl --resolve mail.contoso.test:" << port << ":127.0.0.1 --cacert "
              << (dir / "contoso-ecdsa.crt").string() << " https://mail.contoso.test:" << port << "/owa/\n"
              << "    curl --resolve autodiscover.contoso.test:" << port << ":127.0.0.1 --cacert "
              << (dir / "contoso-rsa.crt").string() << " --tls-max 1.2 --ciphers ECDHE-RSA-AES128-GCM-SHA256"
              << " https://autodiscover.contoso.test:" << port << "/autodiscover/autodiscover.xml\n"
              << "    openssl s_client -connect 127.0.0.1:" << port << " -servername mail.contoso.test\n\n"
              << "  Status page:            http://" << to_string(s.admin_endpoint()) << "/status\n"
              << "  Inspect a certificate:  gatehouse cert inspect " << (dir / "mbx01.crt").string() << "\n"
              << "  Check the config:       gatehouse check -c " << config_file.string() << "\n\n"
              << "Press Ctrl-C to stop.\n"
              << std::flush;
  });
}

}  // namespace gatehouse::proxy
