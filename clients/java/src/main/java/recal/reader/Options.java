package recal.reader;

import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/** Reader settings; every one has a default, so {@code new Options()} is a valid configuration. */
public final class Options {
  final Map<String, List<List<String>>> segmentBy = new HashMap<>();
  final Map<String, String> fallbackVersion = new HashMap<>();
  Duration checkInterval = Duration.ofSeconds(5);
  Duration startTimeout = Duration.ofSeconds(5);
  Duration socketTimeout = Duration.ofSeconds(2);
  Duration maxBackoff = Duration.ofSeconds(5);
  int resolveCacheSize = 100_000;

  /** A snapshot of these settings: a reader keeps its own, so later changes to this object do not reach it. */
  Options copy() {
    Options o = new Options();
    o.segmentBy.putAll(segmentBy);
    o.fallbackVersion.putAll(fallbackVersion);
    o.checkInterval = checkInterval;
    o.startTimeout = startTimeout;
    o.socketTimeout = socketTimeout;
    o.maxBackoff = maxBackoff;
    o.resolveCacheSize = resolveCacheSize;
    return o;
  }

  /** A model's coarser fallback levels, tried after the request's own segment. */
  public Options segmentBy(String model, List<List<String>> levels) {
    segmentBy.put(model, levels.stream().map(List::copyOf).toList());
    return this;
  }

  /**
   * Serve a model's requests that have no map for their model version from this version's maps (counted
   * as fallback hits). Without it such requests get the raw score (a miss).
   */
  public Options fallbackVersion(String model, String modelVersion) {
    fallbackVersion.put(model, modelVersion);
    return this;
  }

  /** Period of the index check that heals missed notifications (default 5 s). */
  public Options checkInterval(Duration d) {
    checkInterval = d;
    return this;
  }

  /** How long connect waits for the first full load (default 5 s). */
  public Options startTimeout(Duration d) {
    startTimeout = d;
    return this;
  }

  /** Redis connect and read timeout (default 2 s). */
  public Options socketTimeout(Duration d) {
    socketTimeout = d;
    return this;
  }

  /** Cap of the reconnect backoff (default 5 s). */
  public Options maxBackoff(Duration d) {
    maxBackoff = d;
    return this;
  }

  /** Bound of the memo of resolved (model, version, segment) requests (default 100,000). */
  public Options resolveCacheSize(int n) {
    resolveCacheSize = n;
    return this;
  }
}
