package recal.reader;

import java.lang.management.ManagementFactory;
import java.time.Duration;
import java.util.Map;
import recal.reader.Harness.Publisher;
import recal.reader.Harness.RedisServer;

/** Heap held by a reader with 100,000 calibrator-sized (98-knot) maps, after a full GC. */
public final class MemoryBench {
  public static void main(String[] args) throws Exception {
    int count = 100_000;
    try (RedisServer srv = new RedisServer();
        Publisher pub = new Publisher(srv.url(), "mem")) {
      pub.send(Map.of("bulk", Map.of("model", "ctr", "model_version", "v2", "count", count, "knots", 98)));
      long before = usedHeap();
      long start = System.nanoTime();
      try (MapReader r = MapReader.connect(srv.url(), "mem", new Options().startTimeout(Duration.ofMinutes(5)))) {
        double load = (System.nanoTime() - start) / 1e9;
        if (r.stats().maps() != count) {
          throw new AssertionError("loaded " + r.stats().maps());
        }
        long after = usedHeap();
        System.out.printf("100,000 maps (Java): heap %.1f MB (%.1f MB before), loaded in %.1f s%n",
            after / 1e6, before / 1e6, load);
        System.out.println(r.calibrate("ctr", "v2", Map.of("seg", "7"), 0.25)); // keep the reader alive
      }
    }
  }

  private static long usedHeap() throws InterruptedException {
    for (int i = 0; i < 3; i++) {
      System.gc();
      Thread.sleep(200);
    }
    return ManagementFactory.getMemoryMXBean().getHeapMemoryUsage().getUsed();
  }
}
