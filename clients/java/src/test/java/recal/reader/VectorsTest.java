package recal.reader;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.HashMap;
import java.util.Map;
import org.junit.jupiter.api.Test;

class VectorsTest {
  private static final JsonNode V = Vectors.DOC;

  @Test
  void escapingSegmentKeysFieldsAndFallbackChains() {
    for (JsonNode c : V.get("escape")) {
      assertEquals(c.get("escaped").asText(), Keys.escape(c.get("raw").asText()), c.toString());
    }
    for (JsonNode c : V.get("segment_keys")) {
      assertEquals(c.get("key").asText(), Keys.segmentKey(Vectors.strings(c.get("segment"))), c.toString());
    }
    for (JsonNode c : V.get("fields")) {
      String key = Keys.segmentKey(Vectors.strings(c.get("segment")));
      assertEquals(c.get("field").asText(), Keys.field(c.get("model").asText(), c.get("model_version").asText(), key));
    }
    for (JsonNode c : V.get("fallback_chains")) {
      assertEquals(
          Vectors.list(c.get("chain")),
          Keys.fallbackChain(Vectors.strings(c.get("segment")), Vectors.levels(c.get("segment_by"))),
          c.toString());
    }
    assertTrue(V.get("escape").size() > 10 && V.get("fallback_chains").size() > 5);
  }

  @Test
  void applyIsBitForBitThePythonCore() throws Exception {
    int checked = 0;
    for (JsonNode c : V.get("apply")) {
      CalibrationMap m = CalibrationMap.parseStored(c.get("field").asText(), Vectors.utf8(c.get("json")));
      double[] scores = Vectors.doubles(c.get("scores"));
      double[] expected = Vectors.doubles(c.get("expected"));
      double[] batch = new double[scores.length];
      m.apply(scores, batch);
      for (int i = 0; i < scores.length; i++) {
        long want = Double.doubleToRawLongBits(expected[i]);
        String at = c.get("name").asText() + " at " + scores[i];
        assertEquals(want, Double.doubleToRawLongBits(m.apply(scores[i])), "apply " + at);
        assertEquals(want, Double.doubleToRawLongBits(batch[i]), "batch " + at);
        checked++;
      }
    }
    assertTrue(checked > 1000, "checked " + checked);
  }

  @Test
  void invalidMapsAreRejected() {
    for (JsonNode c : V.get("invalid")) {
      assertThrows(
          CalibrationMap.InvalidMapException.class,
          () -> CalibrationMap.parseStored(c.get("field").asText(), Vectors.utf8(c.get("json"))),
          c.get("name").asText());
    }
    assertTrue(V.get("invalid").size() >= 30);
  }

  @Test
  void mapsWithUnknownFieldsAreAccepted() {
    for (JsonNode c : V.get("accepted")) {
      try {
        CalibrationMap.parseStored(c.get("field").asText(), Vectors.utf8(c.get("json")));
      } catch (CalibrationMap.InvalidMapException e) {
        fail(c.get("name").asText() + ": " + e.getMessage());
      }
    }
  }

  @Test
  void lookupFollowsTheFallbackChainWithinTheModelVersion() throws Exception {
    JsonNode v = V.get("lookup");
    Map<String, CalibrationMap> maps = new HashMap<>();
    for (JsonNode m : v.get("maps")) {
      String field = m.get("field").asText();
      maps.put(field, CalibrationMap.parseStored(field, Vectors.utf8(m.get("json"))));
    }
    Options options = new Options();
    v.get("segment_by").fields().forEachRemaining(e -> options.segmentBy(e.getKey(), Vectors.levels(e.getValue())));
    v.get("fallback_version")
        .fields()
        .forEachRemaining(e -> options.fallbackVersion(e.getKey(), e.getValue().asText()));
    MapReader r = MapReader.offline(maps, options);
    for (JsonNode q : v.get("queries")) {
      for (int round = 0; round < 2; round++) { // the second time from the resolution memo
        ReaderStats before = r.stats();
        CalibrationMap got =
            r.lookup(q.get("model").asText(), q.get("model_version").asText(), Vectors.strings(q.get("segment")));
        ReaderStats after = r.stats();
        if (q.get("served").isNull()) {
          assertNull(got, q.toString());
        } else {
          assertSame(maps.get(q.get("served").asText()), got, q.toString());
        }
        String outcome =
            after.misses() > before.misses()
                ? "miss"
                : after.fallbackHits() > before.fallbackHits() ? "fallback_version" : "hit";
        assertEquals(q.get("outcome").asText(), outcome, q.toString());
      }
      if (q.get("served").isNull()) {
        assertEquals(0.25, r.calibrate(q.get("model").asText(), q.get("model_version").asText(),
            Vectors.strings(q.get("segment")), 0.25), "a miss returns the raw score");
      }
    }
  }

  @Test
  void malformedRequestsAreMissesNotExceptions() {
    MapReader r = MapReader.offline(Map.of(), new Options());
    Map<String, String> withNull = new HashMap<>();
    withNull.put("platform", null);
    assertEquals(0.5, r.calibrate("ctr", "v2", withNull, 0.5));
    assertEquals(0.5, r.calibrate(null, "v2", Map.of(), 0.5));
    assertEquals(0.5, r.calibrate("ctr", "v2", null, 0.5));
    assertEquals(3, r.stats().misses());
  }
}
