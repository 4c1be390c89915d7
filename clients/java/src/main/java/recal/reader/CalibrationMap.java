package recal.reader;

import com.fasterxml.jackson.core.json.JsonReadFeature;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.json.JsonMapper;
import java.io.IOException;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;

/**
 * One validated calibration map: y = piecewise-linear interpolation of (x, y), clamped outside [x[0],
 * x[-1]], exactly as numpy's {@code np.interp} computes it. Immutable and safe to share across threads.
 */
public final class CalibrationMap {
  /** The map layout version this reader understands. */
  public static final int SCHEMA = 2;

  /** A map's size bound, as the publisher's. */
  public static final int MAX_KNOTS = 4096;

  private static final JsonMapper JSON =
      JsonMapper.builder()
          .disable(JsonReadFeature.ALLOW_NON_NUMERIC_NUMBERS)
          .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
          .build();

  private final String model;
  private final String modelVersion;
  private final Map<String, String> segment;
  private final long version;
  private final long updatedAtMs;
  private final double[] x;
  private final double[] y;
  private volatile short[] grid; // first[c]: knots in sqrt-grid cells before c; built on the first large batch

  private CalibrationMap(
      String model,
      String modelVersion,
      Map<String, String> segment,
      long version,
      long updatedAtMs,
      double[] x,
      double[] y) {
    this.model = model;
    this.modelVersion = modelVersion;
    this.segment = segment;
    this.version = version;
    this.updatedAtMs = updatedAtMs;
    this.x = x;
    this.y = y;
  }

  /** Thrown for a stored value a reader must not apply. */
  public static final class InvalidMapException extends Exception {
    InvalidMapException(String message) {
      super(message);
    }
  }

  /**
   * Parses and validates a stored map value. Unknown fields are ignored; wrong schema or types, NaN or
   * infinite numbers, non-monotone or mismatched knots are rejected.
   */
  public static CalibrationMap parse(byte[] raw) throws InvalidMapException {
    JsonNode doc;
    try {
      doc = JSON.readTree(raw);
    } catch (IOException e) {
      throw new InvalidMapException("not valid JSON: " + e.getMessage());
    }
    if (doc == null || !doc.isObject()) {
      throw new InvalidMapException("not a JSON object");
    }
    long schema = integer(doc, "schema");
    if (schema != SCHEMA) {
      throw new InvalidMapException("unsupported schema " + schema + " (expected " + SCHEMA + ")");
    }
    String model = text(doc, "model");
    String modelVersion = text(doc, "model_version");
    if (model.isEmpty() || modelVersion.isEmpty()) {
      throw new InvalidMapException("model and model_version must be non-empty");
    }
    Map<String, String> segment = segment(doc);
    long version = integer(doc, "version");
    if (version < 0) {
      throw new InvalidMapException("version must be >= 0, got " + version);
    }
    double[] x = numbers(doc, "x");
    double[] y = numbers(doc, "y");
    checkKnots(x, y);
    checkOptional(doc);
    long updatedAtMs = doc.has("updated_at") ? doc.get("updated_at").asLong() : 0;
    return new CalibrationMap(model, modelVersion, Map.copyOf(segment), version, updatedAtMs, x, y);
  }

  /** {@link #parse} plus the check that the value belongs to the field it is stored under. */
  public static CalibrationMap parseStored(String field, byte[] raw) throws InvalidMapException {
    CalibrationMap m = parse(raw);
    if (!m.field().equals(field)) {
      throw new InvalidMapException("value under " + field + " belongs to " + m.field());
    }
    return m;
  }

  private static JsonNode required(JsonNode doc, String name) throws InvalidMapException {
    JsonNode v = doc.get(name);
    if (v == null) {
      throw new InvalidMapException("missing field " + name);
    }
    return v;
  }

  private static long integer(JsonNode doc, String name) throws InvalidMapException {
    JsonNode v = required(doc, name);
    if (!(v.isInt() || v.isLong())) { // 2.0, "2", true and integers beyond 64 bits are not
      throw new InvalidMapException(name + " must be an integer");
    }
    return v.asLong();
  }

  private static String text(JsonNode doc, String name) throws InvalidMapException {
    JsonNode v = required(doc, name);
    if (!v.isTextual()) {
      throw new InvalidMapException(name + " must be a string");
    }
    return v.textValue();
  }

  private static Map<String, String> segment(JsonNode doc) throws InvalidMapException {
    JsonNode v = required(doc, "segment");
    if (!v.isObject()) {
      throw new InvalidMapException("segment must be an object");
    }
    Map<String, String> out = new HashMap<>();
    for (Iterator<Map.Entry<String, JsonNode>> it = v.fields(); it.hasNext(); ) {
      Map.Entry<String, JsonNode> e = it.next();
      if (!e.getValue().isTextual()) {
        throw new InvalidMapException("segment value of " + e.getKey() + " must be a string");
      }
      out.put(e.getKey(), e.getValue().textValue());
    }
    return out;
  }

  private static double[] numbers(JsonNode doc, String name) throws InvalidMapException {
    JsonNode v = required(doc, name);
    if (!v.isArray()) {
      throw new InvalidMapException(name + " must be an array");
    }
    double[] out = new double[v.size()];
    for (int i = 0; i < out.length; i++) {
      JsonNode e = v.get(i);
      if (!finite(e)) {
        throw new InvalidMapException(name + "[" + i + "] must be a finite number");
      }
      out[i] = e.doubleValue();
    }
    return out;
  }

  /**
   * The optional fields a map may carry, validated as the Python reader does: unknown fields are ignored,
   * but a known one of the wrong type makes the map invalid.
   */
  private static void checkOptional(JsonNode doc) throws InvalidMapException {
    for (String name : new String[] {"updated_at", "last_event_ms"}) {
      if (doc.has(name)) {
        integer(doc, name);
      }
    }
    if (doc.has("method")) {
      text(doc, "method");
    }
    for (String name : new String[] {"n", "positives"}) {
      if (doc.has(name) && !(finite(doc.get(name)) && doc.get(name).doubleValue() >= 0)) {
        throw new InvalidMapException(name + " must be a finite number >= 0");
      }
    }
    JsonNode platt = doc.get("platt");
    if (platt != null && !(platt.isObject() && finite(platt.get("a")) && finite(platt.get("b")))) {
      throw new InvalidMapException("platt must be an object of finite numbers a and b");
    }
    JsonNode prior = doc.get("prior"); // provenance only: an object, entries of any type
    if (prior != null && !prior.isObject()) {
      throw new InvalidMapException("prior must be an object");
    }
    JsonNode metrics = doc.get("metrics");
    if (metrics != null && !metrics.isObject()) {
      throw new InvalidMapException("metrics must be an object");
    }
    for (JsonNode v : metrics == null ? List.<JsonNode>of() : metrics) {
      if (!(v.isTextual() || finite(v))) {
        throw new InvalidMapException("metrics values must be finite numbers or strings");
      }
    }
  }

  private static boolean finite(JsonNode v) {
    return v != null && v.isNumber() && Double.isFinite(v.doubleValue());
  }

  private static void checkKnots(double[] x, double[] y) throws InvalidMapException {
    if (x.length != y.length) {
      throw new InvalidMapException("x and y lengths differ: " + x.length + " vs " + y.length);
    }
    if (x.length < 2 || x.length > MAX_KNOTS) {
      throw new InvalidMapException("need 2.." + MAX_KNOTS + " knots, got " + x.length);
    }
    for (int i = 0; i < x.length; i++) {
      if (!(x[i] >= 0 && x[i] <= 1 && y[i] >= 0 && y[i] <= 1)) {
        throw new InvalidMapException("knots must lie in [0, 1]");
      }
      if (i > 0 && !(x[i] > x[i - 1])) {
        throw new InvalidMapException("x must be strictly increasing");
      }
      if (i > 0 && !(y[i] >= y[i - 1])) {
        throw new InvalidMapException("y must be non-decreasing (map is not monotone)");
      }
    }
  }

  /** np.interp(score, x, y) to the last bit; NaN in gives NaN out. */
  public double apply(double score) {
    double[] x = this.x;
    int n = x.length;
    if (score != score) {
      return score;
    } else if (score > x[n - 1]) {
      return y[n - 1];
    } else if (score < x[0]) {
      return y[0];
    }
    int lo = 0; // the last knot <= score, as numpy's binary search finds it
    int hi = n - 1;
    while (lo < hi) {
      int mid = (lo + hi + 1) >>> 1;
      if (x[mid] <= score) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    return interp(lo, score);
  }

  /** numpy's formula on knot interval j, where x[j] <= score < x[j+1] unless j is the last knot. */
  private double interp(int j, double score) {
    double[] x = this.x;
    double[] y = this.y;
    if (j == x.length - 1 || x[j] == score) {
      return y[j];
    }
    double slope = (y[j + 1] - y[j]) / (x[j + 1] - x[j]);
    double r = slope * (score - x[j]) + y[j];
    if (r != r) { // an infinite slope: numpy retries from the right knot, then takes a flat step's value
      r = slope * (score - x[j + 1]) + y[j + 1];
      if (r != r && y[j] == y[j + 1]) {
        r = y[j];
      }
    }
    return r;
  }

  /**
   * out[i] = apply(scores[i]). Large batches find each score's knot interval through a grid uniform in
   * sqrt(score): cell c = floor(sqrt(s) * cells) is monotone in s, so the last knot &lt;= s lies between the
   * last knot of an earlier cell and the last knot of cell c, usually zero or one comparison apart (the
   * same interval as the binary search, hence the same bits).
   */
  public void apply(double[] scores, double[] out) {
    if (scores.length < 64) {
      for (int i = 0; i < scores.length; i++) {
        out[i] = apply(scores[i]);
      }
      return;
    }
    short[] first = grid;
    if (first == null) {
      first = grid = buildGrid(x);
    }
    double[] x = this.x;
    double lo0 = x[0];
    double hi0 = x[x.length - 1];
    double cells = first.length - 1;
    int last = first.length - 2;
    for (int i = 0; i < scores.length; i++) {
      double s = scores[i];
      if (!(s > lo0 && s < hi0)) { // NaN, the end knots and beyond
        out[i] = apply(s);
        continue;
      }
      int c = Math.min((int) (Math.sqrt(s) * cells), last);
      int lo = Math.max((first[c] & 0xffff) - 1, 0);
      int hi = (first[c + 1] & 0xffff) - 1;
      while (lo < hi) {
        int mid = (lo + hi + 1) >>> 1;
        if (x[mid] <= s) {
          lo = mid;
        } else {
          hi = mid - 1;
        }
      }
      out[i] = interp(lo, s);
    }
  }

  private static short[] buildGrid(double[] x) {
    int cells = 64;
    while (cells < 2 * x.length) {
      cells *= 2;
    }
    int[] first = new int[cells + 1];
    for (double v : x) {
      first[Math.min((int) (Math.sqrt(v) * cells), cells - 1) + 1]++;
    }
    short[] out = new short[cells + 1];
    for (int c = 1; c <= cells; c++) {
      first[c] += first[c - 1];
      out[c] = (short) first[c];
    }
    return out;
  }

  /** The field this map belongs under. */
  public String field() {
    return Keys.field(model, modelVersion, Keys.segmentKey(segment));
  }

  public String model() {
    return model;
  }

  public String modelVersion() {
    return modelVersion;
  }

  public Map<String, String> segment() {
    return segment;
  }

  /** The map version: the publish fence, greater for a newer map. */
  public long version() {
    return version;
  }

  /** The map's updated_at (epoch ms), 0 when it does not say. */
  public long updatedAtMs() {
    return updatedAtMs;
  }

  public double[] x() {
    return x.clone();
  }

  public double[] y() {
    return y.clone();
  }
}
