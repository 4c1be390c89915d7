package recal.reader;

import java.time.Duration;
import java.util.Arrays;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLongArray;
import java.util.concurrent.locks.LockSupport;
import recal.reader.Harness.Publisher;
import recal.reader.Harness.RedisServer;

/**
 * A map published by the Python publisher, until a running reader serves it (pub/sub path; the index
 * check is off): one publish every 20 ms, the reader's cache polled as a request would.
 */
public final class PublishLatencyBench {
  public static void main(String[] args) throws Exception {
    int n = 300;
    Map<String, String> ios = Map.of("platform", "ios");
    try (RedisServer srv = new RedisServer();
        Publisher pub = new Publisher(srv.url(), "bench")) {
      pub.publish("ctr", "v2", ios, 0.5, 1);
      Options o = new Options().checkInterval(Duration.ofHours(1));
      try (MapReader r = MapReader.connect(srv.url(), "bench", o)) {
        AtomicLongArray seen = new AtomicLongArray(n + 2);
        // Wall clock at ns resolution, comparable with the publisher's time.time_ns().
        long offset = System.currentTimeMillis() * 1_000_000L - System.nanoTime();
        Thread poller = new Thread(() -> {
          while (!Thread.currentThread().isInterrupted()) {
            CalibrationMap m = r.lookup("ctr", "v2", ios);
            int v = m == null ? -1 : (int) m.version();
            if (v >= 0 && v < n + 2 && seen.get(v) == 0) {
              seen.set(v, System.nanoTime() + offset);
            }
            LockSupport.parkNanos(20_000);
          }
        });
        poller.start();
        long[] sent = new long[n + 2];
        for (int v = 2; v < n + 2; v++) {
          sent[v] = pub.publish("ctr", "v2", ios, 0.5 + v / 1000.0, v).get("ns").asLong();
          Thread.sleep(20);
        }
        poller.interrupt();
        poller.join();
        double[] lat = new double[n];
        int k = 0;
        for (int v = 2; v < n + 2; v++) {
          if (seen.get(v) > 0) {
            lat[k++] = (seen.get(v) - sent[v]) / 1e6;
          }
        }
        lat = Arrays.copyOf(lat, k);
        Arrays.sort(lat);
        System.out.printf(
            "publish -> reader (Java): %d of %d versions seen, p50 %.2f ms, p99 %.2f ms, max %.2f ms%n",
            k, n, lat[k / 2], lat[k * 99 / 100], lat[k - 1]);
      }
    }
  }
}
