package reader

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// repoRoot is the repository holding this module (clients/go).
func repoRoot(t testing.TB) string {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// tool finds a binary: $ENV, then the project's virtualenv, then PATH.
func tool(t testing.TB, env, venvName string) string {
	if p := os.Getenv(env); p != "" {
		return p
	}
	if p := filepath.Join(repoRoot(t), ".venv", "bin", venvName); fileExists(p) {
		return p
	}
	if p, err := exec.LookPath(venvName); err == nil {
		return p
	}
	t.Fatalf("%s not found: set %s or create the virtualenv (make venv)", venvName, env)
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// redisServer is a real redis-server on a free loopback port that a test can kill and restart.
type redisServer struct {
	t    testing.TB
	bin  string
	port int
	cmd  *exec.Cmd
}

func startRedis(t testing.TB) *redisServer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	s := &redisServer{t: t, bin: tool(t, "RECAL_REDIS_SERVER", "redis-server"), port: port}
	s.start()
	t.Cleanup(s.kill)
	return s
}

func (s *redisServer) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port) }

func (s *redisServer) start() {
	s.cmd = exec.Command(s.bin, "--port", fmt.Sprint(s.port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--daemonize", "no")
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", s.port), MaxRetries: -1})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c.Ping(context.Background()).Err() == nil {
			return
		}
	}
	s.t.Fatal("redis-server did not start")
}

// kill is a crash: SIGKILL, no persistence, so a restart comes back empty.
func (s *redisServer) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// publisher drives clients/testdata/publish.py: the Python core writes every map the tests read.
type publisher struct {
	t     testing.TB
	stdin io.WriteCloser
	out   *bufio.Scanner
}

type published struct {
	Field     string
	Published bool
	Version   int64
	Ns        int64
}

func startPublisher(t testing.TB, url, prefix string) *publisher {
	cmd := exec.Command(tool(t, "RECAL_PYTHON", "python"), "-m", "clients.testdata.publish", url, prefix)
	cmd.Dir = repoRoot(t)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	out := bufio.NewScanner(stdout)
	out.Buffer(make([]byte, 1<<20), 1<<20)
	return &publisher{t: t, stdin: stdin, out: out}
}

func (p *publisher) send(req map[string]any) published {
	line, _ := json.Marshal(req)
	if _, err := p.stdin.Write(append(line, '\n')); err != nil {
		p.t.Fatal(err)
	}
	if !p.out.Scan() {
		p.t.Fatalf("publisher exited: %v", p.out.Err())
	}
	var r published
	if err := json.Unmarshal(p.out.Bytes(), &r); err != nil {
		p.t.Fatal(err)
	}
	return r
}

func (p *publisher) publish(model, version string, segment map[string]string, x, y []float64,
	mapVersion int64) published {
	return p.send(map[string]any{"model": model, "model_version": version, "segment": segment, "x": x, "y": y,
		"version": mapVersion})
}

// eventually polls cond every millisecond until it holds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out after %v waiting for %s", timeout, what)
}
