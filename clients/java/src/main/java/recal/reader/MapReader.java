package recal.reader;

import java.net.URI;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.LongAdder;

/**
 * Calibrated scores from an in-process cache of the maps published in Redis (schema 2).
 *
 * <pre>{@code
 * try (MapReader reader = MapReader.connect("redis://localhost:6379/0", "recal")) {
 *   double p = reader.calibrate("ctr", "v2", Map.of("platform", "ios"), 0.013);
 * }
 * }</pre>
 *
 * <p>The request path reads an immutable snapshot through one volatile reference: no I/O and no lock. A
 * daemon thread keeps the snapshot fresh from the {@code {prefix}:maps:updated} channel plus a periodic
 * check of the {@code {prefix}:maps} index, and keeps the last good maps serving while Redis is down.
 * Thread-safe.
 */
public final class MapReader implements AutoCloseable {
  private record Key(String model, String modelVersion, Map<String, String> segment) {}

  private record Entry(CalibrationMap map, boolean fallback) {}

  private static final Entry NONE = new Entry(null, false);

  /** The cached maps by field, never mutated once published, and the memo of resolved requests. */
  static final class Snapshot {
    final Map<String, CalibrationMap> maps;
    final ConcurrentHashMap<Key, Entry> resolved = new ConcurrentHashMap<>();

    Snapshot(Map<String, CalibrationMap> maps) {
      this.maps = maps;
    }
  }

  final Options options;
  private volatile Snapshot snapshot = new Snapshot(Map.of());
  private final LongAdder misses = new LongAdder();
  private final LongAdder fallbackHits = new LongAdder();
  final AtomicLong rejected = new AtomicLong();
  final AtomicLong redisErrors = new AtomicLong();
  final AtomicLong reloads = new AtomicLong();
  volatile boolean connected;
  volatile long syncedAtMs;
  volatile int unindexed;
  volatile String lastError = "";
  final CountDownLatch synced = new CountDownLatch(1);
  private final Syncer syncer;
  private final Thread thread;

  private MapReader(URI url, String prefix, Options options, boolean start) {
    this.options = options.copy();
    if (start) {
      syncer = new Syncer(this, url, prefix);
      thread = new Thread(syncer, "recal-map-reader");
      thread.setDaemon(true);
      thread.start();
    } else {
      syncer = null;
      thread = null;
    }
  }

  /** {@link #connect(String, String, Options)} with the default options. */
  public static MapReader connect(String url, String prefix) {
    return connect(url, prefix, new Options());
  }

  /**
   * Starts the background sync of namespace {@code prefix} at {@code url} (redis://host:port/db) and waits
   * up to the start timeout for the first full load. Redis being unreachable is not an error: the reader
   * serves raw scores (counted as misses) until it connects. Only a malformed URL is.
   */
  public static MapReader connect(String url, String prefix, Options options) {
    MapReader r = new MapReader(URI.create(url), prefix, options, true);
    r.awaitSynced(options.startTimeout);
    return r;
  }

  /** A reader that never connects, serving the given maps by field (for tests of the request path). */
  static MapReader offline(Map<String, CalibrationMap> maps, Options options) {
    MapReader r = new MapReader(null, "", options, false);
    r.install(Map.copyOf(maps));
    return r;
  }

  /** Waits until the first full load has completed or the timeout passes. */
  public boolean awaitSynced(Duration timeout) {
    try {
      return synced.await(timeout.toNanos(), TimeUnit.NANOSECONDS);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      return false;
    }
  }

  /** The calibrated score, or the raw score when no map serves the request. */
  public double calibrate(String model, String modelVersion, Map<String, String> segment, double score) {
    CalibrationMap m = lookup(model, modelVersion, segment);
    return m == null ? score : m.apply(score);
  }

  /** The calibrated scores in a new array; a copy of the raw scores when no map serves the request. */
  public double[] calibrate(String model, String modelVersion, Map<String, String> segment, double[] scores) {
    double[] out = new double[scores.length];
    calibrate(model, modelVersion, segment, scores, out);
    return out;
  }

  /** Writes the calibrated scores into {@code out} (at least as long as {@code scores}). */
  public void calibrate(
      String model, String modelVersion, Map<String, String> segment, double[] scores, double[] out) {
    CalibrationMap m = lookup(model, modelVersion, segment);
    if (m == null) {
      System.arraycopy(scores, 0, out, 0, scores.length);
    } else {
      m.apply(scores, out);
    }
  }

  /**
   * The map that serves (model, modelVersion, segment) after the segment fallback chain within that model
   * version, then the configured fallback version; null (counted as a miss) when none does.
   */
  public CalibrationMap lookup(String model, String modelVersion, Map<String, String> segment) {
    Entry e = entry(model, modelVersion, segment);
    if (e == NONE) {
      misses.increment();
      return null;
    }
    if (e.fallback) {
      fallbackHits.increment();
    }
    return e.map;
  }

  private Entry entry(String model, String modelVersion, Map<String, String> segment) {
    Snapshot s = snapshot;
    Entry e = s.resolved.get(new Key(model, modelVersion, segment));
    if (e != null) {
      return e;
    }
    Key own;
    try {
      own = new Key(model, modelVersion, Map.copyOf(segment)); // the caller may mutate its map later
      e = resolve(s, model, modelVersion, own.segment);
    } catch (RuntimeException malformed) { // a null model, segment or dim must not fail the request
      return NONE;
    }
    if (s.resolved.size() >= options.resolveCacheSize) {
      s.resolved.clear(); // bounded memory under high-cardinality segments; hot keys re-resolve
    }
    s.resolved.put(own, e);
    return e;
  }

  private Entry resolve(Snapshot s, String model, String modelVersion, Map<String, String> segment) {
    List<String> chain = Keys.fallbackChain(segment, options.segmentBy.getOrDefault(model, List.of()));
    CalibrationMap m = find(s, chain, model, modelVersion);
    if (m != null) {
      return new Entry(m, false);
    }
    String fallback = options.fallbackVersion.get(model);
    if (fallback != null && !fallback.equals(modelVersion)) {
      m = find(s, chain, model, fallback);
      if (m != null) {
        return new Entry(m, true);
      }
    }
    return NONE;
  }

  private static CalibrationMap find(Snapshot s, List<String> chain, String model, String modelVersion) {
    for (String k : chain) {
      CalibrationMap m = s.maps.get(Keys.field(model, modelVersion, k));
      if (m != null) {
        return m;
      }
    }
    return null;
  }

  /** The cached maps by field (an immutable snapshot). */
  Map<String, CalibrationMap> maps() {
    return snapshot.maps;
  }

  /** Publishes a new set of maps; requests resolve afresh against it. */
  void install(Map<String, CalibrationMap> maps) {
    snapshot = new Snapshot(maps);
  }

  /** What the reader holds and what it counted. */
  public ReaderStats stats() {
    Map<String, CalibrationMap> maps = snapshot.maps;
    long now = System.currentTimeMillis();
    Map<String, Duration> ages = new HashMap<>(maps.size() * 2);
    maps.forEach(
        (f, m) -> ages.put(f, Duration.ofMillis(m.updatedAtMs() > 0 ? now - m.updatedAtMs() : 0)));
    long at = syncedAtMs;
    return new ReaderStats(
        maps.size(),
        ages,
        at > 0 ? Duration.ofMillis(now - at) : null,
        misses.sum(),
        fallbackHits.sum(),
        rejected.get(),
        redisErrors.get(),
        reloads.get(),
        connected,
        unindexed,
        lastError);
  }

  /** Stops the background sync; the cached maps stay readable. */
  @Override
  public void close() {
    if (syncer != null) {
      syncer.stop();
      try {
        thread.join(2 * options.socketTimeout.toMillis() + 1000);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
    }
  }
}
