package recal.reader;

import java.lang.System.Logger.Level;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import redis.clients.jedis.DefaultJedisClientConfig;
import redis.clients.jedis.HostAndPort;
import redis.clients.jedis.Jedis;
import redis.clients.jedis.JedisClientConfig;
import redis.clients.jedis.JedisPubSub;
import redis.clients.jedis.util.JedisURIHelper;

/** The background thread: one Redis session at a time, reconnecting with capped, jittered backoff. */
final class Syncer implements Runnable {
  private static final System.Logger LOG = System.getLogger(MapReader.class.getName());
  private static final int MGET_CHUNK = 1000; // keys per MGET: bounded replies on a large namespace
  private static final int MAX_DRAIN = 1000; // notifications folded into one load and one swap
  private static final String SUBSCRIBER_FAILED = new String("subscriber failed"); // compared by identity

  private final MapReader reader;
  private final URI url;
  private final String prefix;
  private final LinkedBlockingQueue<String> inbox = new LinkedBlockingQueue<>();
  private final Map<String, Long> refused = new HashMap<>(); // field -> index version we rejected
  private final CountDownLatch stopped = new CountDownLatch(1);
  private volatile Jedis commands;
  private volatile Jedis subscriber;

  Syncer(MapReader reader, URI url, String prefix) {
    this.reader = reader;
    this.url = url;
    this.prefix = prefix;
  }

  void stop() {
    stopped.countDown();
    closeQuietly(subscriber); // unblocks the subscriber thread and any command in flight
    closeQuietly(commands);
  }

  private boolean isStopped() {
    return stopped.getCount() == 0;
  }

  @Override
  public void run() {
    int failures = 0;
    while (!isStopped()) {
      try {
        session();
        failures = 0;
      } catch (Exception e) {
        if (isStopped()) {
          break;
        }
        if (reader.connected) {
          failures = 0; // a session that had connected starts the backoff afresh
        }
        reader.redisErrors.incrementAndGet();
        reader.lastError = e.getClass().getSimpleName() + ": " + e.getMessage();
        reader.connected = false; // last: whoever sees it disconnected also sees the error counted
        LOG.log(Level.WARNING, "recal map reader: redis unavailable ({0}); serving {1} cached maps",
            reader.lastError, reader.maps().size());
      } finally {
        closeQuietly(subscriber);
        closeQuietly(commands);
      }
      try {
        stopped.await(backoffMillis(failures++), TimeUnit.MILLISECONDS);
      } catch (InterruptedException e) {
        return;
      }
    }
  }

  private long backoffMillis(int failures) {
    long d = Math.min(reader.options.maxBackoff.toMillis(), 50L << Math.min(failures, 20));
    return d / 2 + ThreadLocalRandom.current().nextLong(d / 2 + 1);
  }

  private JedisClientConfig config(int socketTimeoutMillis) {
    int timeout = (int) reader.options.socketTimeout.toMillis();
    return DefaultJedisClientConfig.builder()
        .connectionTimeoutMillis(timeout)
        .socketTimeoutMillis(socketTimeoutMillis)
        .database(JedisURIHelper.getDBIndex(url))
        .user(JedisURIHelper.getUser(url))
        .password(JedisURIHelper.getPassword(url))
        .ssl(JedisURIHelper.isRedisSSLScheme(url))
        .clientName("recal-map-reader")
        .build();
  }

  private void session() throws Exception {
    HostAndPort at = new HostAndPort(url.getHost(), url.getPort() < 0 ? 6379 : url.getPort());
    inbox.clear();
    commands = new Jedis(at, config((int) reader.options.socketTimeout.toMillis()));
    subscriber = new Jedis(at, config(0)); // idle between notifications; outages show on `commands`
    CountDownLatch subscribed = new CountDownLatch(1);
    JedisPubSub listener =
        new JedisPubSub() {
          @Override
          public void onMessage(String channel, String message) {
            inbox.add(message);
          }

          @Override
          public void onSubscribe(String channel, int count) {
            subscribed.countDown();
          }
        };
    Jedis sub = subscriber;
    Thread t =
        new Thread(
            () -> {
              try {
                sub.subscribe(listener, prefix + ":maps:updated");
              } catch (RuntimeException e) {
                // reported to the sync thread below
              }
              inbox.add(SUBSCRIBER_FAILED);
            },
            "recal-map-reader-pubsub");
    t.setDaemon(true);
    t.start();
    try {
      // Subscribed before the full sync, so no update falls in between.
      if (!subscribed.await(reader.options.socketTimeout.toMillis(), TimeUnit.MILLISECONDS)) {
        throw new IllegalStateException("no subscription confirmation");
      }
      Set<String> index = sync(null);
      reader.connected = true;
      reader.lastError = "";
      reader.synced.countDown();
      long interval = reader.options.checkInterval.toNanos();
      long nextCheck = System.nanoTime() + interval;
      while (!isStopped()) {
        long wait = Math.min(Math.max(nextCheck - System.nanoTime(), 0), 200_000_000L);
        String msg = inbox.poll(wait, TimeUnit.NANOSECONDS);
        if (msg != null) {
          Map<String, Long> changed = new HashMap<>();
          for (; msg != null && changed.size() < MAX_DRAIN; msg = inbox.poll()) {
            if (msg == SUBSCRIBER_FAILED) {
              throw new IllegalStateException("subscription lost");
            }
            note(changed, msg);
          }
          if (msg != null) {
            inbox.add(msg); // past MAX_DRAIN: the rest waits for the next round
          }
          load(changed, false, List.of());
        }
        if (System.nanoTime() >= nextCheck) {
          index = sync(index);
          nextCheck = System.nanoTime() + interval;
        }
      }
    } finally {
      if (listener.isSubscribed()) {
        try {
          listener.unsubscribe();
        } catch (RuntimeException e) {
          // the connection is gone already; closing it below ends the thread
        }
      }
      closeQuietly(subscriber);
      t.join(1000);
    }
  }

  /** Records a {@code {field}:{map_version}} notification the cache does not have yet. */
  private void note(Map<String, Long> changed, String msg) {
    int i = msg.lastIndexOf(':');
    long v;
    try {
      v = Long.parseLong(msg.substring(i + 1));
    } catch (NumberFormatException | IndexOutOfBoundsException e) {
      LOG.log(Level.WARNING, "recal map reader: ignoring malformed notification {0}", msg);
      return;
    }
    String field = msg.substring(0, Math.max(i, 0));
    CalibrationMap cur = reader.maps().get(field);
    Long no = refused.get(field);
    if ((cur == null || v > cur.version()) && (no == null || no != v)) {
      changed.merge(field, v, Math::max);
    }
  }

  /**
   * Compares the index with the cache: loads what differs, drops fields seen leaving the index since the
   * previous check of this session. A cached map simply absent (the first check after reconnecting to a
   * Redis that lost its data) keeps serving, counted as unindexed.
   */
  private Set<String> sync(Set<String> previous) throws Exception {
    Map<String, String> raw = commands.hgetAll(prefix + ":maps");
    Map<String, CalibrationMap> maps = reader.maps();
    Map<String, Long> stale = new HashMap<>();
    for (Map.Entry<String, String> e : raw.entrySet()) {
      long v;
      try {
        v = Long.parseLong(e.getValue());
      } catch (NumberFormatException foreign) {
        continue; // a foreign index value: keep what we serve for that key
      }
      CalibrationMap cur = maps.get(e.getKey());
      Long no = refused.get(e.getKey());
      if ((cur == null || cur.version() != v) && (no == null || no != v)) {
        stale.put(e.getKey(), v);
      }
    }
    List<String> deleted = new ArrayList<>();
    if (previous != null) {
      for (String f : previous) {
        if (!raw.containsKey(f)) {
          deleted.add(f);
        }
      }
    }
    load(stale, true, deleted);
    int absent = 0;
    for (String f : reader.maps().keySet()) {
      absent += raw.containsKey(f) ? 0 : 1;
    }
    reader.unindexed = absent;
    reader.syncedAtMs = System.currentTimeMillis();
    return new HashSet<>(raw.keySet());
  }

  /**
   * Fetches and validates {@code fields} (field -> expected version) and swaps in one new snapshot.
   * Notifications only move a key forward; the index is authoritative, so a lower version there (a
   * namespace rebuilt from scratch) replaces the cached map too.
   */
  private void load(Map<String, Long> fields, boolean authoritative, List<String> deleted) {
    Map<String, CalibrationMap> old = reader.maps();
    List<String> names = new ArrayList<>(fields.keySet());
    Map<String, CalibrationMap> updates = new HashMap<>();
    for (int start = 0; start < names.size(); start += MGET_CHUNK) {
      List<String> chunk = names.subList(start, Math.min(start + MGET_CHUNK, names.size()));
      byte[][] keys = new byte[chunk.size()][];
      for (int i = 0; i < keys.length; i++) {
        keys[i] = (prefix + ":map:" + chunk.get(i)).getBytes(StandardCharsets.UTF_8);
      }
      List<byte[]> values = commands.mget(keys);
      for (int i = 0; i < keys.length; i++) {
        String f = chunk.get(i);
        byte[] raw = values.get(i);
        if (raw == null) {
          continue; // deleted after the index read; the next check drops it
        }
        CalibrationMap m = validate(f, raw, fields.get(f));
        if (m == null) {
          continue;
        }
        CalibrationMap cur = old.get(f);
        if (cur == null
            || m.version() > cur.version()
            || (authoritative && m.version() == fields.get(f))) {
          updates.put(f, m);
        }
      }
    }
    List<String> gone = deleted.stream().filter(old::containsKey).toList();
    if (updates.isEmpty() && gone.isEmpty()) {
      return;
    }
    Map<String, CalibrationMap> maps = new HashMap<>(old);
    maps.putAll(updates);
    gone.forEach(maps::remove);
    reader.install(maps);
    reader.reloads.addAndGet(updates.size());
  }

  /** The parsed map, or null (counted, logged once per version) for anything not to apply. */
  private CalibrationMap validate(String field, byte[] raw, long version) {
    try {
      CalibrationMap m = CalibrationMap.parseStored(field, raw);
      refused.remove(field);
      return m;
    } catch (CalibrationMap.InvalidMapException e) {
      reader.rejected.incrementAndGet();
      refused.put(field, version);
      LOG.log(Level.ERROR, "recal map reader: rejected map {0} (index version {1}): {2}; keeping the previous one",
          field, version, e.getMessage());
      return null;
    }
  }

  private static void closeQuietly(Jedis j) {
    if (j != null) {
      try {
        j.close();
      } catch (RuntimeException e) {
        // already broken
      }
    }
  }
}
