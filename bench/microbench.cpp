// Microbenchmarks of the hot paths that do not need a network: SNI lookup,
// Maglev pick and rebuild, config load, and TLS record throughput of the L4
// copy loop over in-memory TLS objects. Built, never run by ctest; run it by
// hand: gatehouse_microbench [--benchmark_filter=REGEX].

#include <benchmark/benchmark.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include <unistd.h>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "balancer/balancer.h"
#include "conf/config.h"
#include "sni/certificate.h"
#include "sni/index.h"
#include "sni/tooling.h"

namespace {

using namespace gatehouse;

// ---- SNI lookup over 10,000 names -----------------------------------------

// 100 certificates of 100 names each: 99 exact names and one wildcard, half
// ECDSA and half RSA. SniIndex reads only names, key type and validity, so
// the entries are built directly, without keys.
constexpr int kCertificates = 100;
constexpr int kNamesPerCertificate = 100;

struct SniFixture {
  std::vector<std::shared_ptr<const sni::LoadedCertificate>> certificates;
  std::unique_ptr<sni::SniIndex> index;
  sni::Clock::time_point now = sni::Clock::now();

  SniFixture() {
    for (int c = 0; c < kCertificates; ++c) {
      auto cert = std::make_shared<sni::LoadedCertificate>();
      cert->name = "cert";
      cert->name += std::to_string(c);
      cert->info.key_type = c % 2 ? sni::KeyType::rsa : sni::KeyType::ecdsa;
      cert->info.not_before = now - std::chrono::hours(24);
      cert->info.not_after = now + std::chrono::hours(24 * 365);
      for (int n = 0; n + 1 < kNamesPerCertificate; ++n) cert->names.push_back(exact_name(c, n));
      std::string wildcard = "*.zone";
      wildcard += std::to_string(c);
      wildcard += ".contoso.test";
      cert->names.push_back(std::move(wildcard));
      certificates.push_back(std::move(cert));
    }
    index = std::make_unique<sni::SniIndex>(certificates, "", false);
  }

  static std::string exact_name(int c, int n) {
    std::string s = "host";
    s += std::to_string(n);
    s += ".tenant";
    s += std::to_string(c);
    s += ".contoso.test";
    return s;
  }
};

const SniFixture& sni_fixture() {
  static const SniFixture fixture;
  return fixture;
}

// Queries as clients send them: mixed case, sometimes a trailing dot.
std::vector<std::string> sni_queries(int kind) {
  std::mt19937 rng(42);
  std::vector<std::string> out;
  for (int i = 0; i < 1024; ++i) {
    const int c = static_cast<int>(rng() % kCertificates);
    const int n = static_cast<int>(rng() % (kNamesPerCertificate - 1));
    std::string q;
    if (kind == 0) {
      q = SniFixture::exact_name(c, n);
    } else if (kind == 1) {
      q = "mail";
      q += std::to_string(n);
      q += ".zone";
      q += std::to_string(c);
      q += ".contoso.test";
    } else {
      q = "host";
      q += std::to_string(n);
      q += ".unknown";
      q += std::to_string(c);
      q += ".example";
    }
    if (i % 3 == 0) q[0] = static_cast<char>(q[0] - 'a' + 'A');
    if (i % 5 == 0) q += '.';
    out.push_back(std::move(q));
  }
  return out;
}

void run_sni(benchmark::State& state, int kind, sni::MatchKind expected) {
  const auto& f = sni_fixture();
  const auto queries = sni_queries(kind);
  std::size_t i = 0;
  for (auto _ : state) {
    const auto& q = queries[i++ & 1023];
    auto selection = f.index->select(q, (i & 1) != 0, f.now);
    benchmark::DoNotOptimize(selection);
    if (selection.kind != expected) {
      state.SkipWithError("unexpected match kind");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["names"] = kCertificates * kNamesPerCertificate;
}

void BM_SniLookupExact(benchmark::State& state) { run_sni(state, 0, sni::MatchKind::exact); }
void BM_SniLookupWildcard(benchmark::State& state) { run_sni(state, 1, sni::MatchKind::wildcard); }
void BM_SniLookupMiss(benchmark::State& state) { run_sni(state, 2, sni::MatchKind::default_certificate); }
BENCHMARK(BM_SniLookupExact);
BENCHMARK(BM_SniLookupWildcard);
BENCHMARK(BM_SniLookupMiss);

void BM_SniIndexBuild(benchmark::State& state) {
  const auto& f = sni_fixture();
  for (auto _ : state) {
    sni::SniIndex index(f.certificates, "", false);
    benchmark::DoNotOptimize(index);
  }
}
BENCHMARK(BM_SniIndexBuild)->Unit(benchmark::kMillisecond);

// ---- Maglev ------------------------------------------------------------------

struct Pool {
  std::vector<std::string> names;
  std::vector<balancer::ServerView> views;
  explicit Pool(int n) {
    for (int i = 0; i < n; ++i) {
      std::string name = "mbx";
      name += std::to_string(i);
      names.push_back(std::move(name));
    }
    for (const auto& name : names) views.push_back({name, "dc1", 1, true, 0});
  }
};

void BM_MaglevPick(benchmark::State& state) {
  Pool pool(static_cast<int>(state.range(0)));
  auto selector = balancer::make_selector(conf::Balance::maglev, pool.views);
  balancer::Tried tried;
  std::uint64_t key = 0x9E3779B97F4A7C15ULL;
  for (auto _ : state) {
    key = key * 6364136223846793005ULL + 1442695040888963407ULL;
    benchmark::DoNotOptimize(selector->pick(pool.views, tried, key));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MaglevPick)->Arg(10)->Arg(100);

// With a server down, picks that land on it must look further.
void BM_MaglevPickOneDown(benchmark::State& state) {
  Pool pool(static_cast<int>(state.range(0)));
  auto selector = balancer::make_selector(conf::Balance::maglev, pool.views);
  pool.views[0].available = false;
  balancer::Tried tried;
  std::uint64_t key = 1;
  for (auto _ : state) {
    key = key * 6364136223846793005ULL + 1442695040888963407ULL;
    benchmark::DoNotOptimize(selector->pick(pool.views, tried, key));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MaglevPickOneDown)->Arg(10)->Arg(100);

void BM_MaglevRebuild(benchmark::State& state) {
  Pool pool(static_cast<int>(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(balancer::make_selector(conf::Balance::maglev, pool.views));
}
BENCHMARK(BM_MaglevRebuild)->Arg(10)->Arg(100)->Unit(benchmark::kMicrosecond);

void BM_HashKey(benchmark::State& state) {
  const std::string address = "192.168.100.200";
  for (auto _ : state) benchmark::DoNotOptimize(balancer::hash_key(address));
}
BENCHMARK(BM_HashKey);

// ---- config load ---------------------------------------------------------------

// A temporary directory with one generated certificate and a config of
// 1,000 servers, 1,000 pools and 1,000 routes.
struct LargeConfig {
  std::filesystem::path dir;
  std::filesystem::path file;

  LargeConfig() {
    char pattern[] = "/tmp/gatehouse-microbench-XXXXXX";
    if (mkdtemp(pattern) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir = pattern;
    sni::NewCertificateOptions options;
    options.common_name = "mail.contoso.test";
    options.sans = {"mail.contoso.test", "*.contoso.test"};
    options.key = "ec256";
    sni::write_certificate(options, dir / "mail");

    std::string text = "[global]\nworkers = 1\nadmin = \"\"\n\n";
    text += "[[certificate]]\nname = \"mail\"\ncert = \"mail.crt\"\nkey = \"mail.key\"\n\n";
    text += "[[listener]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\nmode = \"l7\"\n\n";
    for (int i = 0; i < 1000; ++i) {
      const std::string n = std::to_string(i);
      text += "[[server]]\nname = \"mbx";
      text += n;
      text += "\"\naddress = \"10.0.";
      text += std::to_string(i / 250);
      text += ".";
      text += std::to_string(i % 250 + 1);
      text += ":443\"\nsite = \"dc";
      text += std::to_string(i % 2 + 1);
      text += "\"\nweight = 1\n\n";
    }
    for (int i = 0; i < 1000; ++i) {
      const std::string n = std::to_string(i);
      text += "[[pool]]\nname = \"pool";
      text += n;
      text += "\"\nservers = [\"mbx";
      text += n;
      text += "\", \"mbx";
      text += std::to_string((i + 1) % 1000);
      text += "\"]\nbalance = \"";
      text += i % 2 ? "maglev" : "round_robin";
      text +=
          "\"\ntls = \"plain\"\nhealth = { kind = \"http\", path = \"/owa/healthcheck.htm\", expect = 200, "
          "interval = \"5s\", timeout = \"2s\", rise = 2, fall = 3 }\n\n";
    }
    for (int i = 0; i < 1000; ++i) {
      const std::string n = std::to_string(i);
      text += "[[route]]\nlistener = \"https\"\nhosts = [\"host";
      text += n;
      text += ".contoso.test\"]\npaths = [\"/owa\", \"/ecp\"]\npool = \"pool";
      text += n;
      text += "\"\n\n";
    }
    file = dir / "gatehouse.toml";
    std::ofstream(file) << text;
  }
  ~LargeConfig() {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
};

void BM_ConfigLoadLarge(benchmark::State& state) {
  LargeConfig config;
  for (auto _ : state) {
    auto result = conf::load_file(config.file);
    if (!result.ok()) {
      state.SkipWithError(result.errors.front().to_string().c_str());
      break;
    }
    benchmark::DoNotOptimize(result);
  }
  state.counters["bytes"] = static_cast<double>(std::filesystem::file_size(config.file));
}
BENCHMARK(BM_ConfigLoadLarge)->Unit(benchmark::kMillisecond);

// ---- TLS records in memory --------------------------------------------------------

constexpr std::size_t kRecord = 16 * 1024;

// A client and a server SSL joined by a BIO pair, handshake done.
struct TlsPair {
  bssl::UniquePtr<SSL> client;
  bssl::UniquePtr<SSL> server;
};

struct TlsContexts {
  bssl::UniquePtr<SSL_CTX> server;
  bssl::UniquePtr<SSL_CTX> client;

  TlsContexts() {
    sni::NewCertificateOptions options;
    options.common_name = "mail.contoso.test";
    options.key = "ec256";
    auto generated = sni::generate_certificate(options);
    bssl::UniquePtr<BIO> cert_bio(
        BIO_new_mem_buf(generated.cert_pem.data(), static_cast<int>(generated.cert_pem.size())));
    bssl::UniquePtr<BIO> key_bio(BIO_new_mem_buf(generated.key_pem.data(), static_cast<int>(generated.key_pem.size())));
    bssl::UniquePtr<X509> cert(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
    bssl::UniquePtr<EVP_PKEY> key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
    server.reset(SSL_CTX_new(TLS_method()));
    client.reset(SSL_CTX_new(TLS_method()));
    if (!cert || !key || !server || !client || SSL_CTX_use_certificate(server.get(), cert.get()) != 1 ||
        SSL_CTX_use_PrivateKey(server.get(), key.get()) != 1)
      throw std::runtime_error("microbench: cannot set up the TLS contexts");
    SSL_CTX_set_min_proto_version(server.get(), TLS1_3_VERSION);
    SSL_CTX_set_verify(client.get(), SSL_VERIFY_NONE, nullptr);
  }

  TlsPair connect() const {
    TlsPair pair{bssl::UniquePtr<SSL>(SSL_new(client.get())), bssl::UniquePtr<SSL>(SSL_new(server.get()))};
    BIO* a = nullptr;
    BIO* b = nullptr;
    // Room for a full 16 KiB record plus its header and tag.
    BIO_new_bio_pair(&a, 64 * 1024, &b, 64 * 1024);
    SSL_set_bio(pair.client.get(), a, a);
    SSL_set_bio(pair.server.get(), b, b);
    SSL_set_connect_state(pair.client.get());
    SSL_set_accept_state(pair.server.get());
    bool client_done = false;
    bool server_done = false;
    for (int round = 0; round < 100 && !(client_done && server_done); ++round) {
      if (!client_done) client_done = SSL_do_handshake(pair.client.get()) == 1;
      if (!server_done) server_done = SSL_do_handshake(pair.server.get()) == 1;
    }
    if (!client_done || !server_done) throw std::runtime_error("microbench: in-memory handshake did not finish");
    return pair;
  }
};

const TlsContexts& tls_contexts() {
  static const TlsContexts contexts;
  return contexts;
}

// Reads exactly `size` bytes that are already buffered in the BIO pair.
bool read_exact(SSL* ssl, char* data, std::size_t size) {
  std::size_t got = 0;
  while (got < size) {
    const int n = SSL_read(ssl, data + got, static_cast<int>(size - got));
    if (n <= 0) return false;
    got += static_cast<std::size_t>(n);
  }
  return true;
}

// One direction of one TLS connection: seal a 16 KiB record, open it.
void BM_TlsRecordWriteRead(benchmark::State& state) {
  auto pair = tls_contexts().connect();
  std::vector<char> in(kRecord, 'x');
  std::vector<char> out(kRecord);
  for (auto _ : state) {
    if (SSL_write(pair.client.get(), in.data(), static_cast<int>(kRecord)) != static_cast<int>(kRecord) ||
        !read_exact(pair.server.get(), out.data(), kRecord)) {
      state.SkipWithError("SSL_write/SSL_read failed");
      break;
    }
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kRecord));
  state.SetLabel(SSL_get_cipher_name(pair.client.get()));
}
BENCHMARK(BM_TlsRecordWriteRead);

// The L4 copy loop between two TLS connections as the proxy runs it: the
// front connection's record is opened (SSL_read) and sealed again towards
// the backend (SSL_write). The client's seal and the backend's open are the
// peers' work, done here too, so the figure is the whole path: four AEAD
// passes per byte, two of them the proxy's.
void BM_L4CopyLoop(benchmark::State& state) {
  auto front = tls_contexts().connect();  // client -> proxy (front)
  auto back = tls_contexts().connect();   // proxy (back) -> backend
  std::vector<char> in(kRecord, 'x');
  std::vector<char> buffer(kRecord);  // the proxy's one buffer
  std::vector<char> out(kRecord);
  for (auto _ : state) {
    if (SSL_write(front.client.get(), in.data(), static_cast<int>(kRecord)) != static_cast<int>(kRecord) ||
        !read_exact(front.server.get(), buffer.data(), kRecord) ||
        SSL_write(back.client.get(), buffer.data(), static_cast<int>(kRecord)) != static_cast<int>(kRecord) ||
        !read_exact(back.server.get(), out.data(), kRecord)) {
      state.SkipWithError("copy loop failed");
      break;
    }
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kRecord));
  state.SetLabel(SSL_get_cipher_name(front.client.get()));
}
BENCHMARK(BM_L4CopyLoop);

}  // namespace

BENCHMARK_MAIN();
