package reader

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// calibratorSized is the vectors' 98-knot map (a calibrator's n_bins + 2), served under a 2-dim segment.
func calibratorSized(b *testing.B) (*Reader, map[string]string) {
	for _, c := range loadVectors(b).Apply {
		if c.Name == "calibrator-sized" {
			m, err := ParseStored(c.Field, []byte(c.JSON))
			if err != nil {
				b.Fatal(err)
			}
			return offline(map[string]*Map{c.Field: m}), m.Segment
		}
	}
	b.Fatal("no calibrator-sized map in the vectors")
	return nil, nil
}

func BenchmarkCalibrateOne(b *testing.B) {
	r, seg := calibratorSized(b)
	scores := make([]float64, 1024)
	for i := range scores {
		scores[i] = rand.Float64() * rand.Float64()
	}
	var sink float64
	i := 0
	for b.Loop() {
		sink += r.Calibrate("ctr", "v2", seg, scores[i&1023])
		i++
	}
	_ = sink
}

func BenchmarkCalibrateBatch10k(b *testing.B) {
	r, seg := calibratorSized(b)
	scores := make([]float64, 10_000)
	for i := range scores {
		scores[i] = rand.Float64() * rand.Float64()
	}
	dst := make([]float64, len(scores))
	for b.Loop() {
		dst = r.CalibrateBatch("ctr", "v2", seg, scores, dst)
	}
	b.ReportMetric(float64(b.N*len(scores))/b.Elapsed().Seconds()/1e6, "Mscores/s")
}

// BenchmarkPublishToReader: a map published by the Python publisher, until a running reader serves it
// (pub/sub path; the index check is off). Publishes every 20 ms, like a busy worker's refreshes.
func BenchmarkPublishToReader(b *testing.B) {
	srv := startRedis(b)
	pub := startPublisher(b, srv.url(), "bench")
	pub.publish("ctr", "v2", ios, xs, ys(0.5), 1)
	r, err := Connect(context.Background(), srv.url(), WithPrefix("bench"), WithCheckInterval(time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	const n = 300
	seen := make([]atomic.Int64, n+2)
	stop := make(chan struct{})
	go func() { // the ranker's view: poll the cache as a request would
		for {
			select {
			case <-stop:
				return
			default:
			}
			if v := version(r, "ctr", "v2", ios); v >= 0 && v < int64(len(seen)) && seen[v].Load() == 0 {
				seen[v].Store(time.Now().UnixNano())
			}
			time.Sleep(20 * time.Microsecond)
		}
	}()
	sent := make([]int64, n+2)
	for b.Loop() {
		for v := int64(2); v < n+2; v++ {
			sent[v] = pub.publish("ctr", "v2", ios, xs, ys(0.5+float64(v)/1000), v).Ns
			time.Sleep(20 * time.Millisecond)
		}
	}
	close(stop)
	var lat []float64
	for v := 2; v < n+2; v++ {
		if at := seen[v].Load(); at > 0 {
			lat = append(lat, float64(at-sent[v])/1e6)
		}
	}
	slices.Sort(lat)
	if len(lat) < n*9/10 {
		b.Fatalf("only %d of %d versions observed", len(lat), n)
	}
	b.ReportMetric(lat[len(lat)/2], "p50_ms")
	b.ReportMetric(lat[len(lat)*99/100], "p99_ms")
	b.ReportMetric(lat[len(lat)-1], "max_ms")
}

// BenchmarkMemory100kMaps: RSS of a process whose reader holds 100,000 calibrator-sized maps.
func BenchmarkMemory100kMaps(b *testing.B) {
	srv := startRedis(b)
	pub := startPublisher(b, srv.url(), "mem")
	const count = 100_000
	pub.send(map[string]any{"bulk": map[string]any{"model": "ctr", "model_version": "v2", "count": count, "knots": 98}})
	before := rssMB(b)
	for b.Loop() {
		start := time.Now()
		r, err := Connect(context.Background(), srv.url(), WithPrefix("mem"), WithStartTimeout(5*time.Minute))
		if err != nil {
			b.Fatal(err)
		}
		if got := r.Stats().Maps; got != count {
			b.Fatalf("loaded %d maps", got)
		}
		load := time.Since(start)
		b.ReportMetric(rssMB(b), "rss_before_gc_MB")
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(rssMB(b), "rss_MB")
		b.ReportMetric(rssMB(b)-before, "rss_growth_MB")
		b.ReportMetric(float64(ms.HeapInuse)/1e6, "heap_MB")
		b.ReportMetric(load.Seconds(), "load_s")
		_ = r.Close()
		runtime.KeepAlive(r)
	}
}

func rssMB(b *testing.B) float64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			return kb / 1024
		}
	}
	b.Fatal(fmt.Errorf("no VmRSS"))
	return 0
}

// BenchmarkParseMap: validating one stored 98-knot map (what a full load does 100,000 times).
func BenchmarkParseMap(b *testing.B) {
	for _, c := range loadVectors(b).Apply {
		if c.Name == "calibrator-sized" {
			raw := []byte(c.JSON)
			for b.Loop() {
				if _, err := ParseStored(c.Field, raw); err != nil {
					b.Fatal(err)
				}
			}
			return
		}
	}
}
