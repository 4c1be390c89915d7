package recal.reader;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** The shared vectors in clients/testdata/vectors.json, generated from the Python core. */
final class Vectors {
  static final Path ROOT = Path.of("").toAbsolutePath().getParent().getParent(); // clients/java -> repo
  static final JsonNode DOC = load();

  private Vectors() {}

  private static JsonNode load() {
    try {
      return new ObjectMapper().readTree(ROOT.resolve("clients/testdata/vectors.json").toFile());
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  static double bits(JsonNode hex) {
    return Double.longBitsToDouble(Long.parseUnsignedLong(hex.asText(), 16));
  }

  static double[] doubles(JsonNode hexes) {
    double[] out = new double[hexes.size()];
    for (int i = 0; i < out.length; i++) {
      out[i] = bits(hexes.get(i));
    }
    return out;
  }

  static Map<String, String> strings(JsonNode obj) {
    Map<String, String> out = new LinkedHashMap<>();
    obj.fields().forEachRemaining(e -> out.put(e.getKey(), e.getValue().asText()));
    return out;
  }

  static List<String> list(JsonNode arr) {
    List<String> out = new ArrayList<>();
    arr.forEach(v -> out.add(v.asText()));
    return out;
  }

  static List<List<String>> levels(JsonNode arr) {
    List<List<String>> out = new ArrayList<>();
    arr.forEach(level -> out.add(list(level)));
    return out;
  }

  static byte[] utf8(JsonNode s) {
    return s.asText().getBytes(StandardCharsets.UTF_8);
  }

  /** The named map of the apply vectors, parsed. */
  static CalibrationMap applyMap(String name) throws CalibrationMap.InvalidMapException {
    for (JsonNode c : DOC.get("apply")) {
      if (c.get("name").asText().equals(name)) {
        return CalibrationMap.parseStored(c.get("field").asText(), utf8(c.get("json")));
      }
    }
    throw new IllegalArgumentException(name);
  }
}
