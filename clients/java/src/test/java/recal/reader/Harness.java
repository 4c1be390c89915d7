package recal.reader;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.UncheckedIOException;
import java.io.Writer;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.function.BooleanSupplier;

/** A real redis-server and the Python publisher (clients/testdata/publish.py) for integration tests. */
final class Harness {
  private static final ObjectMapper JSON = new ObjectMapper();

  private Harness() {}

  /** $ENV, then the project's virtualenv, then PATH. */
  static String tool(String env, String name) {
    String p = System.getenv(env);
    if (p != null && !p.isEmpty()) {
      return p;
    }
    Path venv = Vectors.ROOT.resolve(".venv/bin").resolve(name);
    return Files.isExecutable(venv) ? venv.toString() : name;
  }

  /** A redis-server on a free loopback port, killable and restartable (no persistence). */
  static final class RedisServer implements AutoCloseable {
    final int port;
    private Process process;

    RedisServer() throws IOException {
      try (ServerSocket s = new ServerSocket(0)) {
        port = s.getLocalPort();
      }
      start();
    }

    String url() {
      return "redis://127.0.0.1:" + port + "/0";
    }

    void start() throws IOException {
      process =
          new ProcessBuilder(
                  tool("RECAL_REDIS_SERVER", "redis-server"), "--port", String.valueOf(port),
                  "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
              .redirectErrorStream(true)
              .redirectOutput(ProcessBuilder.Redirect.DISCARD)
              .start();
      eventually(Duration.ofSeconds(10), "redis-server up", () -> {
        try (Socket ignored = new Socket("127.0.0.1", port)) {
          return true;
        } catch (IOException e) {
          return false;
        }
      });
    }

    /** A crash: SIGKILL. */
    void kill() throws InterruptedException {
      process.destroyForcibly().waitFor();
    }

    @Override
    public void close() throws InterruptedException {
      kill();
    }
  }

  /** Drives the Python publisher over stdin/stdout, one JSON request and reply per line. */
  static final class Publisher implements AutoCloseable {
    private final Process process;
    private final Writer in;
    private final BufferedReader out;

    Publisher(String url, String prefix) throws IOException {
      process =
          new ProcessBuilder(tool("RECAL_PYTHON", "python"), "-m", "clients.testdata.publish", url, prefix)
              .directory(Vectors.ROOT.toFile())
              .redirectError(ProcessBuilder.Redirect.INHERIT)
              .start();
      in = new OutputStreamWriter(process.getOutputStream(), StandardCharsets.UTF_8);
      out = new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8));
    }

    JsonNode send(Map<String, Object> request) {
      try {
        in.write(JSON.writeValueAsString(request) + "\n");
        in.flush();
        String line = out.readLine();
        if (line == null) {
          throw new IllegalStateException("the publisher exited");
        }
        return JSON.readTree(line);
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
    }

    JsonNode publish(String model, String version, Map<String, String> segment, double top, long mapVersion) {
      return send(Map.of("model", model, "model_version", version, "segment", segment,
          "x", List.of(0.0, 0.5, 1.0), "y", List.of(0.0, top / 2, top), "version", mapVersion));
    }

    @Override
    public void close() throws Exception {
      in.close();
      process.waitFor();
    }
  }

  static void eventually(Duration timeout, String what, BooleanSupplier cond) {
    long deadline = System.nanoTime() + timeout.toNanos();
    while (System.nanoTime() < deadline) {
      if (cond.getAsBoolean()) {
        return;
      }
      try {
        Thread.sleep(1);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return;
      }
    }
    throw new AssertionError("timed out after " + timeout + " waiting for " + what);
  }
}
