package recal.reader;

import java.util.Map;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.Warmup;

/** The request path from cache: the vectors' 98-knot map (a calibrator's n_bins + 2), a 2-dim segment. */
@State(Scope.Thread)
@Fork(1)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
public class CalibrateBench {
  private MapReader reader;
  private Map<String, String> segment;
  private final double[] one = new double[1024];
  private final double[] batch = new double[10_000];
  private final double[] out = new double[10_000];
  private int i;

  @Setup
  public void setup() throws Exception {
    CalibrationMap m = Vectors.applyMap("calibrator-sized");
    reader = MapReader.offline(Map.of(m.field(), m), new Options());
    segment = Map.of("platform", "ios", "placement", "search"); // a fresh map equal to the map's segment
    Random rng = new Random(1);
    for (int k = 0; k < one.length; k++) {
      one[k] = rng.nextDouble() * rng.nextDouble();
    }
    for (int k = 0; k < batch.length; k++) {
      batch[k] = rng.nextDouble() * rng.nextDouble();
    }
  }

  @Benchmark
  @BenchmarkMode({Mode.AverageTime, Mode.SampleTime})
  @OutputTimeUnit(TimeUnit.NANOSECONDS)
  public double calibrateOne() {
    return reader.calibrate("ctr", "v2", segment, one[i++ & 1023]);
  }

  /** 10,000 scores per op: scores/s = 10,000 / (µs/op) * 1e6. */
  @Benchmark
  @BenchmarkMode(Mode.AverageTime)
  @OutputTimeUnit(TimeUnit.MICROSECONDS)
  public double[] calibrateBatch10k() {
    reader.calibrate("ctr", "v2", segment, batch, out);
    return out;
  }
}
