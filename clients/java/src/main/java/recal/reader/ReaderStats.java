package recal.reader;

import java.time.Duration;
import java.util.Map;

/**
 * A point-in-time view of a reader.
 *
 * @param maps cached maps
 * @param mapAges per field, time since the map's updated_at (zero when the map does not say)
 * @param sinceSync time since the cache was last confirmed against the index (null before the first)
 * @param misses requests served the raw score
 * @param fallbackHits requests served from the configured fallback version
 * @param rejected stored values refused (invalid, or not belonging to their key)
 * @param redisErrors failed Redis sessions
 * @param reloads maps installed
 * @param connected whether the current session is up
 * @param unindexed cached maps the index lacks, e.g. after Redis restarted empty
 * @param lastError the last Redis error, empty when connected
 */
public record ReaderStats(
    int maps,
    Map<String, Duration> mapAges,
    Duration sinceSync,
    long misses,
    long fallbackHits,
    long rejected,
    long redisErrors,
    long reloads,
    boolean connected,
    int unindexed,
    String lastError) {}
