"""The HTTP/2 denial-of-service catalogue against one worker: each attack runs
on one connection for a few seconds while well-behaved HTTP/1.1 and HTTP/2
clients on other connections keep asking. Every good request is answered
(none slower than 0.5 s in the Release build), Gatehouse's RSS grows by less
than 64 MiB, and where the pattern is unambiguous the attacker gets
GOAWAY(ENHANCE_YOUR_CALM), an h2_abuse event names the pattern, and the
connection is closed. Rapid Reset (CVE-2023-44487) and the CONTINUATION flood
(CVE-2024-28182) are in test_l7_safety.py."""

import sys
import time

import h2frames as f
import harness as h
from test_l7_safety import ATTACK_FRAMES, SLOWEST, H2AttackCase, vm_rss_kib

RSS_GROWTH_MIB = 64 if not h.SANITIZED else 400


def setUpModule():
    # The attacker and the recording backend share this interpreter: hand its
    # lock over often, so that the backend's answers to the good clients are
    # not held up behind the attacker's frame parsing.
    global _switch
    _switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)


def tearDownModule():
    sys.setswitchinterval(_switch)


class H2Catalogue(H2AttackCase):
    def run_catalogue(self, what, word, batch, setup=b"", disconnects=True, settings=None):
        """Floods `batch()` (bytes, frames) after `setup` on one connection after
        another, with victims beside it; checks the victims, the RSS and, when
        `disconnects`, the GOAWAY and the h2_abuse event naming `word`."""
        victims = self.start_victims()
        baseline = vm_rss_kib(self.g.proc.pid)

        def next_batch(frames):
            if frames >= ATTACK_FRAMES:
                return None
            payload, n = batch(frames)
            return (setup if frames == 0 else b"") + payload, n

        def start():
            conn = self.connect("h2")
            client = f.H2Client(conn)
            if settings:
                conn.queue(f.settings(settings))
            self.assertTrue(client.handshake(10 * h.SLOW), f"no SETTINGS from the server ({conn.how})")
            return conn, client, next_batch

        started = time.monotonic()
        runs = self.attack(start, what)
        ended = time.monotonic()
        if disconnects:
            self.check_attack_runs(runs, word)
            for _, client, _ in runs:
                self.assertEqual(client.goaway[1], f.ENHANCE_YOUR_CALM, runs[0][2]["summary"])
        else:
            print(f"\n  {runs[0][2]['summary']}")
        peak = max(result["rss_peak"] for _, _, result in runs)
        growth = (peak - baseline) / 1024
        print(f"  RSS {baseline / 1024:.1f} MiB before, peak {peak / 1024:.1f} MiB")
        self.assertLess(growth, RSS_GROWTH_MIB, runs[0][2]["summary"])
        slowest = self.check_victims(victims, started, ended)
        self.assertLess(slowest, SLOWEST, f"a good request took {slowest:.2f} s during the {what}")
        status, _, body = self.h1_get("/after-attack")
        self.assertEqual((status, body), (200, b"mbx01 GET /after-attack\n"))
        self.assertIsNone(self.g.proc.poll())
        return runs

    def test_cve_2019_9511_data_dribble(self):
        # Big answers on several streams, taken a byte of window at a time.
        streams = 20
        requests = b"".join(f.headers(1 + 2 * i, f.encode_headers(f.request_fields(f"/big-dribble-{i}")))
                            for i in range(streams))

        def batch(frames):
            ups = b"".join(f.window_update(1 + 2 * (i % streams), 1) for i in range(200))
            return ups, 200

        self.run_catalogue("data dribble", "", batch, setup=requests, disconnects=False,
                           settings={f.SETTINGS_INITIAL_WINDOW_SIZE: 1})

    def test_cve_2019_9512_ping_flood(self):
        self.run_catalogue("ping flood", "ping", lambda n: (f.ping(b"%08d" % (n % 10**8)) * 500, 500))

    def test_cve_2019_9513_priority_churn(self):
        def batch(frames):
            out = b""
            for i in range(500):
                sid = 1 + 2 * ((frames + i) % 1000)
                dep = 1 + 2 * ((frames + i * 7) % 1000)
                if dep == sid:
                    dep += 2
                out += f.frame(f.PRIORITY, 0, sid, dep.to_bytes(4, "big") + bytes([i % 256]))
            return out, 500

        self.run_catalogue("priority churn", "priority", batch)

    def test_cve_2019_9514_reset_flood(self):
        # Requests the server must refuse (an uppercase field name): each costs it an RST_STREAM.
        bad = f.encode_headers(f.request_fields("/bad-reset-flood") + [("X-Upper", "1")])

        def batch(frames):
            return b"".join(f.headers(1 + 2 * (frames + i), bad) for i in range(200)), 200

        self.run_catalogue("reset flood", "reset", batch)

    def test_cve_2019_9515_settings_flood(self):
        self.run_catalogue("settings flood", "settings",
                           lambda n: (f.settings({f.SETTINGS_INITIAL_WINDOW_SIZE: 65535}) * 500, 500))

    def test_cve_2019_9516_zero_length_headers(self):
        block = f.encode_headers(f.request_fields("/bad-empty-names") + [("", "")] * 50)

        def batch(frames):
            return b"".join(f.headers(1 + 2 * (frames + i), block) for i in range(100)), 100

        self.run_catalogue("zero-length header flood", "invalid_headers", batch)

    def test_cve_2019_9517_internal_data_buffering(self):
        # Big answers asked for on 50 streams whose windows never open: what
        # Gatehouse holds for them is bounded per stream.
        requests = b"".join(f.headers(1 + 2 * i, f.encode_headers(f.request_fields(f"/big-buffer-{i}")))
                            for i in range(50))
        # Then only connection-level credit, which opens no stream.
        self.run_catalogue("internal data buffering", "", lambda n: (f.window_update(0, 1) * 10, 10),
                           setup=requests, disconnects=False, settings={f.SETTINGS_INITIAL_WINDOW_SIZE: 0})

    def test_cve_2019_9518_empty_data_frames(self):
        opener = f.headers(1, f.encode_headers(f.request_fields("/bad-empty-data", method="POST")), end_stream=False)
        self.run_catalogue("empty DATA flood", "empty_frames", lambda n: (f.data(1, b"") * 1000, 1000), setup=opener)

    def test_cve_2016_6581_hpack_bomb(self):
        # One 4 KiB entry in the dynamic table, then blocks that reference it thousands of times.
        entry = b"\x40" + f.encode_string(b"x-bomb") + f.encode_string(b"b" * 4000)
        first = f.headers(1, f.encode_headers(f.request_fields("/bad-bomb-setup")) + entry)
        refs = f.encode_headers(f.request_fields("/bad-bomb")) + b"\xbe" * 16000  # index 62: the newest entry

        def batch(frames):
            return b"".join(f.header_frames(3 + 2 * (frames + i), refs) for i in range(4)), 4

        self.run_catalogue("HPACK bomb", "hpack_bomb", batch, setup=first)
        self.assertNotIn("/bad-bomb", self.web.paths(), "a bomb stream reached the backend")
