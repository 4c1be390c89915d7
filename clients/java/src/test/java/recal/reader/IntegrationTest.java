package recal.reader;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import recal.reader.Harness.Publisher;
import recal.reader.Harness.RedisServer;

class IntegrationTest {
  private static final Map<String, String> IOS = Map.of("platform", "ios");

  private static long version(MapReader r, String model, String version, Map<String, String> segment) {
    CalibrationMap m = r.lookup(model, version, segment);
    return m == null ? -1 : m.version();
  }

  @Test
  void readsWhatThePythonPublisherWrote() throws Exception {
    try (RedisServer srv = new RedisServer();
        Publisher pub = new Publisher(srv.url(), "it")) {
      Map<String, String> seg = Map.of("k:ey", "v|al", "日本", "*%");
      pub.publish("ctr:eu", "v|2", seg, 0.8, 3);
      pub.publish("ctr:eu", "v|2", Map.of(), 0.2, 1);
      try (MapReader r = MapReader.connect(srv.url(), "it", new Options().checkInterval(Duration.ofHours(1)))) {
        assertEquals(0.2, r.calibrate("ctr:eu", "v|2", seg, 0.25));
        assertEquals(0.1, r.calibrate("ctr:eu", "v|2", Map.of("k:ey", "other"), 0.5), "model-wide fallback");
        assertEquals(0.25, r.calibrate("ctr:eu", "v1", seg, 0.25), "never another model version's map");
        assertArrayEquals(new double[] {0, 0.4, 0.8}, r.calibrate("ctr:eu", "v|2", seg, new double[] {0, 0.5, 1}));
        ReaderStats s = r.stats();
        assertEquals(2, s.maps());
        assertTrue(s.connected());
        assertEquals(1, s.misses());
        assertEquals(0, s.rejected());
        assertTrue(s.mapAges().get(Keys.field("ctr:eu", "v|2", "*")).toDays() > 0, "age from updated_at");
      }
    }
  }

  @Test
  void pubSubRefreshAndAMissedMessageHealedByTheCheck() throws Exception {
    try (RedisServer srv = new RedisServer();
        Publisher pub = new Publisher(srv.url(), "it")) {
      pub.publish("ctr", "v2", IOS, 0.5, 1);
      try (MapReader r = MapReader.connect(srv.url(), "it", new Options().checkInterval(Duration.ofMillis(300)))) {
        assertEquals(1, version(r, "ctr", "v2", IOS));
        pub.publish("ctr", "v2", IOS, 0.6, 2);
        Harness.eventually(Duration.ofSeconds(2), "pub/sub update", () -> version(r, "ctr", "v2", IOS) == 2);
        CalibrationMap old = r.lookup("ctr", "v2", IOS);
        Map<String, Object> silent = new HashMap<>(Map.of("model", "ctr", "model_version", "v2", "segment", IOS,
            "x", List.of(0.0, 0.5, 1.0), "y", List.of(0.0, 0.35, 0.7), "version", 3, "silent", true));
        pub.send(silent);
        Harness.eventually(Duration.ofSeconds(3), "index check", () -> version(r, "ctr", "v2", IOS) == 3);
        assertEquals(0.7, r.calibrate("ctr", "v2", IOS, 1.0));
        assertEquals(2, old.version(), "a new map replaces, never mutates, the old one");
      }
    }
  }

  @Test
  void aCorruptValueKeepsThePreviousMap() throws Exception {
    try (RedisServer srv = new RedisServer();
        Publisher pub = new Publisher(srv.url(), "it")) {
      pub.publish("ctr", "v2", IOS, 0.5, 1);
      try (MapReader r = MapReader.connect(srv.url(), "it", new Options().checkInterval(Duration.ofMillis(200)))) {
        String field = Keys.field("ctr", "v2", Keys.segmentKey(IOS));
        pub.send(Map.of("raw", "{\"schema\":2,\"model\":\"ctr\"", "field", field, "version", 2));
        Harness.eventually(Duration.ofSeconds(2), "a rejection", () -> r.stats().rejected() == 1);
        String foreign = "{\"schema\":2,\"model\":\"ctr\",\"model_version\":\"v1\",\"segment\":{\"platform\":\"ios\"},"
            + "\"version\":3,\"x\":[0,1],\"y\":[0,1]}";
        pub.send(Map.of("raw", foreign, "field", field, "version", 3));
        Harness.eventually(Duration.ofSeconds(2), "two rejections", () -> r.stats().rejected() >= 2);
        Thread.sleep(500); // two index checks: a refused version is not refetched
        assertEquals(2, r.stats().rejected());
        assertEquals(1, version(r, "ctr", "v2", IOS));
        pub.publish("ctr", "v2", IOS, 0.9, 4);
        Harness.eventually(
            Duration.ofSeconds(2), "a valid map after corrupt ones", () -> version(r, "ctr", "v2", IOS) == 4);
      }
    }
  }

  @Test
  void servesThroughARedisOutageAndRecovers() throws Exception {
    try (RedisServer srv = new RedisServer()) {
      try (Publisher pub = new Publisher(srv.url(), "it")) {
        pub.publish("ctr", "v2", IOS, 0.5, 5);
      }
      Options o = new Options().checkInterval(Duration.ofMillis(200)).socketTimeout(Duration.ofMillis(300))
          .maxBackoff(Duration.ofMillis(200));
      try (MapReader r = MapReader.connect(srv.url(), "it", o)) {
        srv.kill();
        Harness.eventually(Duration.ofSeconds(3), "the outage noticed", () -> !r.stats().connected());
        for (int i = 0; i < 100; i++) {
          assertEquals(0.25, r.calibrate("ctr", "v2", IOS, 0.5), "serving the cached map during the outage");
        }
        assertTrue(r.stats().redisErrors() > 0);
        assertFalse(r.stats().lastError().isEmpty());
        srv.start(); // back empty: the cached map keeps serving, counted as unindexed
        Harness.eventually(Duration.ofSeconds(5), "reconnect", () -> r.stats().connected());
        Harness.eventually(Duration.ofSeconds(2), "unindexed", () -> r.stats().unindexed() == 1);
        assertEquals(5, version(r, "ctr", "v2", IOS), "an empty Redis must not drop the cached map");
        try (Publisher pub = new Publisher(srv.url(), "it")) {
          pub.publish("ctr", "v2", IOS, 0.9, 1); // rebuilt from scratch: the index is authoritative
        }
        Harness.eventually(Duration.ofSeconds(3), "the rebuilt map", () -> version(r, "ctr", "v2", IOS) == 1);
      }
    }
  }

  @Test
  void concurrentCalibrateDuringUpdates() throws Exception {
    try (RedisServer srv = new RedisServer();
        Publisher pub = new Publisher(srv.url(), "it")) {
      pub.publish("ctr", "v2", IOS, 0.5, 1);
      try (MapReader r = MapReader.connect(srv.url(), "it", new Options().checkInterval(Duration.ofMillis(50)))) {
        AtomicReference<Double> bad = new AtomicReference<>();
        List<Thread> threads = new ArrayList<>();
        for (int t = 0; t < 8; t++) {
          Thread th = new Thread(() -> {
            Map<String, String> seg = Map.of("platform", "ios", "x", "y");
            while (!Thread.currentThread().isInterrupted()) {
              double got = r.calibrate("ctr", "v2", seg, 1.0); // every map published has y(1) in [0.5, 1]
              if (got < 0.5) {
                bad.set(got);
                return;
              }
            }
          });
          th.start();
          threads.add(th);
        }
        for (int v = 2; v <= 30; v++) {
          pub.publish("ctr", "v2", IOS, 0.5 + v / 60.0, v);
        }
        Harness.eventually(Duration.ofSeconds(2), "the last update", () -> version(r, "ctr", "v2", IOS) == 30);
        for (Thread th : threads) {
          th.interrupt();
          th.join();
        }
        assertEquals(null, bad.get(), "a concurrent calibrate returned the raw score or a torn map");
      }
    }
  }

  @Test
  void startsWhileRedisIsDownAndDropsDeletedFields() throws Exception {
    try (RedisServer srv = new RedisServer()) {
      srv.kill();
      Options o = new Options().startTimeout(Duration.ofMillis(300)).checkInterval(Duration.ofMillis(200))
          .socketTimeout(Duration.ofMillis(200)).maxBackoff(Duration.ofMillis(200));
      try (MapReader r = MapReader.connect(srv.url(), "it", o)) {
        assertEquals(0.5, r.calibrate("ctr", "v2", IOS, 0.5), "raw score before Redis is up");
        assertEquals(1, r.stats().misses());
        assertFalse(r.stats().connected());
        srv.start();
        try (Publisher pub = new Publisher(srv.url(), "it")) {
          pub.publish("ctr", "v2", IOS, 0.5, 1);
          pub.publish("ctr", "v2", Map.of(), 0.9, 1);
          Harness.eventually(Duration.ofSeconds(5), "the maps once Redis is up", () -> r.stats().maps() == 2);
          Thread.sleep(600); // an index check sees both fields: a deletion is a field seen leaving the index
          pub.send(Map.of("delete", Keys.field("ctr", "v2", Keys.segmentKey(IOS))));
          Harness.eventually(Duration.ofSeconds(3), "the deleted field dropped", () -> r.stats().maps() == 1);
          assertEquals(0.9, r.calibrate("ctr", "v2", IOS, 1.0), "after the delete the model-wide map serves");
        }
      }
    }
  }
}
