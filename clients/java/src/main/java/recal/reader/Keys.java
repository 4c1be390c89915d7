package recal.reader;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/** The key contract shared with the Python publisher: escaping, segment keys, fields, fallback chains. */
public final class Keys {
  /** The segment key of the model-wide map. */
  public static final String MODEL_WIDE = "*";

  private Keys() {}

  /** Key-component escaping of model names, model versions, segment dims and values. */
  public static String escape(String s) {
    StringBuilder b = null;
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      String e =
          switch (c) {
            case '%' -> "%25";
            case '=' -> "%3D";
            case '|' -> "%7C";
            case ':' -> "%3A";
            case '*' -> "%2A";
            default -> null;
          };
      if (e != null && b == null) {
        b = new StringBuilder(s.length() + 8).append(s, 0, i);
      }
      if (b != null) {
        if (e != null) {
          b.append(e);
        } else {
          b.append(c);
        }
      }
    }
    return b == null ? s : b.toString();
  }

  /** Unicode code point order, as Python sorts strings (String.compareTo is UTF-16 order). */
  static int compareCodePoints(String a, String b) {
    int i = 0;
    int j = 0;
    while (i < a.length() && j < b.length()) {
      int ca = a.codePointAt(i);
      int cb = b.codePointAt(j);
      if (ca != cb) {
        return Integer.compare(ca, cb);
      }
      i += Character.charCount(ca);
      j += Character.charCount(cb);
    }
    return Integer.compare(a.length() - i, b.length() - j);
  }

  /** Sorted escaped {@code dim=value} pairs joined by {@code |}, or {@code *} for the empty segment. */
  public static String segmentKey(Map<String, String> segment) {
    if (segment.isEmpty()) {
      return MODEL_WIDE;
    }
    TreeMap<String, String> sorted = new TreeMap<>(Keys::compareCodePoints);
    sorted.putAll(segment);
    StringBuilder b = new StringBuilder();
    for (Map.Entry<String, String> e : sorted.entrySet()) {
      if (b.length() > 0) {
        b.append('|');
      }
      b.append(escape(e.getKey())).append('=').append(escape(e.getValue()));
    }
    return b.toString();
  }

  /** {@code esc(model):esc(modelVersion):segmentKey}: the index field, key suffix and notification prefix. */
  public static String field(String model, String modelVersion, String segmentKey) {
    return escape(model) + ":" + escape(modelVersion) + ":" + segmentKey;
  }

  /**
   * Segment keys from finest to coarsest, ending with {@code *}: the segment itself, then each level of
   * {@code segmentBy} the segment can fill (levels missing a dim are skipped, duplicates dropped).
   */
  public static List<String> fallbackChain(Map<String, String> segment, List<List<String>> segmentBy) {
    List<String> keys = new ArrayList<>(segmentBy.size() + 2);
    add(keys, segment);
    for (List<String> dims : segmentBy) {
      Map<String, String> projected = new TreeMap<>();
      boolean complete = true;
      for (String d : dims) {
        String v = segment.get(d);
        if (v == null) {
          complete = false;
          break;
        }
        projected.put(d, v);
      }
      if (complete) {
        add(keys, projected);
      }
    }
    keys.add(MODEL_WIDE);
    return keys;
  }

  private static void add(List<String> keys, Map<String, String> projected) {
    if (!projected.isEmpty()) {
      String k = segmentKey(projected);
      if (!keys.contains(k)) {
        keys.add(k);
      }
    }
  }
}
