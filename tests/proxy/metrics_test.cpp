// Per-worker counters: each worker counts on its own thread with no lock,
// a scrape on another thread sums them while they count, and a listener or
// pool keeps its series ids when a generation is built again, so that its
// counters carry on across a reload.

#include "proxy/runtime/metrics.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>

#include "conf/config.h"
#include "proxy/runtime/generation.h"
#include "proxy/tls/ticket_keys.h"
#include "tests/proxy/test_support.h"

namespace gatehouse::proxy {
namespace {

constexpr std::uint64_t kRequests = 200'000;

// What one worker's thread counts: the same load into each worker.
void count(WorkerMetrics& w, const MetricIds::Id web, const MetricIds::Id live, const MetricIds::Id series) {
  for (std::uint64_t i = 0; i < kRequests; ++i) {
    w.connection_accepted();
    w.handshake_done(i % 4 == 0);
    w.sni(i % 2 == 0 ? sni::MatchKind::exact : sni::MatchKind::wildcard);
    // 1 in 10 is a 503 after 2 s; the rest 200 in 3 ms.
    if (i % 10 == 0) w.request(series, 503, 2.0);
    else w.request(series, 200, 0.003);
    if (i % 100 == 0) w.refused(web, Refusal::listener_max_connections);
    w.bound_connections(live, 1);
    if (i % 2 == 1) w.bound_connections(live, -1);
  }
}

TEST(WorkerMetrics, ScrapeSumsWorkersCountingOnTheirOwnThreads) {
  MetricIds ids;
  const auto web = ids.listener("web");
  const auto live = ids.pool("live");
  const auto series = ids.series("web", "live");
  const auto unused = ids.series("web", "");  // named, never counted: not in the scrape
  (void)unused;
  WorkerMetrics first, second;
  const WorkerMetrics* workers[] = {&first, &second};

  std::atomic<bool> done{false};
  std::thread a([&] { count(first, web, live, series); });
  std::thread b([&] { count(second, web, live, series); });
  // Scrapes while both count: totals only grow, and a status counted is
  // in the histogram already.
  std::thread scraper([&] {
    std::uint64_t last = 0;
    while (!done.load()) {
      const MetricTotals t = sum_metrics(workers, ids);
      EXPECT_GE(t.connections_total, last);
      last = t.connections_total;
      std::uint64_t by_status = 0;
      for (const auto& [key, n] : t.requests) by_status += n;
      if (by_status != 0) {
        EXPECT_GE(t.latencies.at({"web", "live"}).count, by_status);
      }
    }
  });
  a.join();
  b.join();
  done = true;
  scraper.join();

  const MetricTotals t = sum_metrics(workers, ids);
  const std::uint64_t n = 2 * kRequests;
  EXPECT_EQ(t.connections_total, n);
  EXPECT_EQ(t.handshakes_resumed, n / 4);
  EXPECT_EQ(t.handshakes_full, n - n / 4);
  EXPECT_EQ(t.sni_hits[static_cast<int>(sni::MatchKind::exact)], n / 2);
  EXPECT_EQ(t.sni_hits[static_cast<int>(sni::MatchKind::wildcard)], n / 2);
  EXPECT_EQ(t.sni_hits[static_cast<int>(sni::MatchKind::rejected)], 0u);

  using Key = MetricTotals::RequestKey;
  EXPECT_EQ(t.requests,
            (std::map<Key, std::uint64_t>{{Key{"web", "live", 200}, n - n / 10}, {Key{"web", "live", 503}, n / 10}}));
  ASSERT_EQ(t.latencies.size(), 1u);
  const Latency& latency = t.latencies.at({"web", "live"});
  EXPECT_EQ(latency.count, n);
  EXPECT_EQ(latency.buckets[0], n - n / 10);  // le 0.005
  EXPECT_EQ(latency.buckets[8], n / 10);      // le 2.5
  EXPECT_NEAR(latency.sum, (n - n / 10) * 0.003 + (n / 10) * 2.0, 1e-6 * latency.sum);

  using Pair = std::pair<std::string, std::string>;
  EXPECT_EQ(t.refusals, (std::map<Pair, std::uint64_t>{{Pair{"web", "listener_max_connections"}, n / 100}}));
  EXPECT_EQ(t.bound, (std::map<std::string, std::int64_t>{{"live", static_cast<std::int64_t>(n / 2)}}));
}

TEST(WorkerMetrics, StatusesOutsideThreeDigitsCountAsNothingSent) {
  MetricIds ids;
  const auto series = ids.series("web", "");
  WorkerMetrics w;
  w.request(series, 0, 0.1);
  w.request(series, 999, 0.1);
  w.request(series, 1000, 0.1);
  w.request(series, -1, 0.1);
  w.request(series, 100, 100.0);  // past the last bucket: only in +Inf (the count)
  const WorkerMetrics* workers[] = {&w};
  const MetricTotals t = sum_metrics(workers, ids);
  using Key = MetricTotals::RequestKey;
  EXPECT_EQ(t.requests,
            (std::map<Key, std::uint64_t>{{Key{"web", "", 0}, 3}, {Key{"web", "", 100}, 1}, {Key{"web", "", 999}, 1}}));
  std::uint64_t in_buckets = 0;
  for (auto b : t.latencies.at({"web", ""}).buckets) in_buckets += b;
  EXPECT_EQ(in_buckets, 4u);
  EXPECT_EQ(t.latencies.at({"web", ""}).count, 5u);
}

TEST(MetricIds, SameNameSameIdNewNameNewId) {
  MetricIds ids;
  const auto web = ids.listener("web");
  const auto imap = ids.listener("imaps");
  EXPECT_NE(web, imap);
  EXPECT_EQ(ids.listener("web"), web);
  EXPECT_EQ(ids.pool("web"), 0u);  // listeners and pools are named apart
  EXPECT_NE(ids.series("web", ""), ids.series("web", "owa"));
  EXPECT_EQ(ids.series("web", "owa"), ids.series("web", "owa"));
  const auto names = ids.names();
  EXPECT_EQ(names.listeners, (std::vector<std::string>{"web", "imaps"}));
  EXPECT_EQ(names.series.at(ids.series("web", "owa")), (std::pair<std::string, std::string>{"web", "owa"}));
}

// A config of listeners and pools named as given, each pool with one
// server behind it; every listener routes to the first pool.
std::string config_text(const test::TestCertificate& front, const std::vector<std::string>& listeners,
                        const std::vector<std::string>& pools) {
  std::string text = "[global]\nworkers = 2\nadmin = \"\"\n\n[[certificate]]\nname = \"front\"\ncert = \"" +
                     front.cert.string() + "\"\nkey = \"" + front.key.string() + "\"\n\n";
  text += "[[server]]\nname = \"mbx01\"\naddress = \"127.0.0.1:1\"\npin = \"" + front.thumbprint + "\"\n\n";
  for (const auto& p : pools)
    text += "[[pool]]\nname = \"" + p + "\"\nservers = [\"mbx01\"]\nbalance = \"round_robin\"\ntls = \"verify\"\n\n";
  for (const auto& l : listeners) {
    text += "[[listener]]\nname = \"" + l + "\"\nbind = \"127.0.0.1:0\"\nmode = \"l7\"\n\n";
    text += "[[route]]\nlistener = \"" + l + "\"\npool = \"" + pools.front() + "\"\npaths = [\"/\"]\n\n";
  }
  return text;
}

std::shared_ptr<Generation> build(const test::TempDir& dir, const std::string& text, std::uint64_t number) {
  conf::LoadResult loaded = conf::load_string(text, dir / "gatehouse.toml");
  std::string errors;
  for (const auto& e : loaded.errors) errors += e.to_string() + "\n";
  if (!loaded.ok()) ADD_FAILURE() << errors << text;
  return Generation::build(std::move(*loaded.config), 2, TicketKeys::random_rotating(), number);
}

TEST(MetricIds, SurviveARebuildUnderTheSameNames) {
  const test::TempDir dir;
  const auto front = test::make_certificate(dir, "front", "mail.gatehouse.test");
  const auto first = build(dir, config_text(front, {"web", "autodiscover"}, {"owa", "mapi"}), 1);
  // The next generation drops a pool, adds one and a listener, and orders
  // them otherwise: what both have keeps its ids.
  const auto second = build(dir, config_text(front, {"smtp", "autodiscover", "web"}, {"ews", "owa"}), 2);

  for (const char* l : {"web", "autodiscover"}) {
    const ListenerRuntime& before = *first->listener(l);
    const ListenerRuntime& after = *second->listener(l);
    EXPECT_EQ(before.metric_id, after.metric_id) << l;
    EXPECT_EQ(first->request_series(before, nullptr), second->request_series(after, nullptr)) << l;
    EXPECT_EQ(first->request_series(before, first->pool("owa")), second->request_series(after, second->pool("owa")))
        << l;
    EXPECT_NE(second->request_series(after, second->pool("owa")), second->request_series(after, second->pool("ews")));
  }
  EXPECT_EQ(first->pool("owa")->metric_id, second->pool("owa")->metric_id);
  EXPECT_NE(second->pool("ews")->metric_id, first->pool("mapi")->metric_id);
  EXPECT_NE(second->listener("smtp")->metric_id, first->listener("web")->metric_id);
  EXPECT_NE(second->listener("smtp")->metric_id, first->listener("autodiscover")->metric_id);

  // Every series of a generation is named by its listener and pool.
  const auto names = metrics().ids().names();
  const ListenerRuntime& smtp = *second->listener("smtp");
  EXPECT_EQ(names.series.at(second->request_series(smtp, second->pool("ews"))),
            (std::pair<std::string, std::string>{"smtp", "ews"}));
  EXPECT_EQ(names.series.at(second->request_series(smtp, nullptr)), (std::pair<std::string, std::string>{"smtp", ""}));
  EXPECT_EQ(names.listeners.at(smtp.metric_id), "smtp");
  EXPECT_EQ(names.pools.at(second->pool("ews")->metric_id), "ews");
}

}  // namespace
}  // namespace gatehouse::proxy
