package reader

import (
	"context"
	"testing"
	"time"
)

var (
	ios = map[string]string{"platform": "ios"}
	xs  = []float64{0, 0.5, 1}
)

func ys(top float64) []float64 { return []float64{0, top / 2, top} }

func connect(t *testing.T, url string, options ...Option) *Reader {
	r, err := Connect(context.Background(), url, append([]Option{WithPrefix("it")}, options...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func version(r *Reader, model, modelVersion string, segment map[string]string) int64 {
	if m := r.Lookup(model, modelVersion, segment); m != nil {
		return m.Version
	}
	return -1
}

func TestReadsWhatThePythonPublisherWrote(t *testing.T) {
	srv := startRedis(t)
	pub := startPublisher(t, srv.url(), "it")
	seg := map[string]string{"k:ey": "v|al", "日本": "*%"}
	pub.publish("ctr:eu", "v|2", seg, xs, ys(0.8), 3)
	pub.publish("ctr:eu", "v|2", map[string]string{}, xs, ys(0.2), 1)
	r := connect(t, srv.url(), WithCheckInterval(time.Hour))
	if got := r.Calibrate("ctr:eu", "v|2", seg, 0.25); got != 0.2 {
		t.Fatalf("segment map: got %v, want 0.2", got)
	}
	if got := r.Calibrate("ctr:eu", "v|2", map[string]string{"k:ey": "other"}, 0.5); got != 0.1 {
		t.Fatalf("model-wide fallback: got %v, want 0.1", got)
	}
	if got := r.Calibrate("ctr:eu", "v1", seg, 0.25); got != 0.25 {
		t.Fatalf("another model version must not be served: got %v", got)
	}
	batch := r.CalibrateBatch("ctr:eu", "v|2", seg, []float64{0, 0.5, 1}, nil)
	if batch[0] != 0 || batch[1] != 0.4 || batch[2] != 0.8 {
		t.Fatalf("batch: %v", batch)
	}
	st := r.Stats()
	if st.Maps != 2 || !st.Connected || !st.Synced || st.Misses != 1 || st.Rejected != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestPubSubRefreshAndMissedMessageHealedByCheck(t *testing.T) {
	srv := startRedis(t)
	pub := startPublisher(t, srv.url(), "it")
	pub.publish("ctr", "v2", ios, xs, ys(0.5), 1)
	r := connect(t, srv.url(), WithCheckInterval(300*time.Millisecond))
	if version(r, "ctr", "v2", ios) != 1 {
		t.Fatal("first load")
	}
	pub.publish("ctr", "v2", ios, xs, ys(0.6), 2)
	eventually(t, 2*time.Second, "pub/sub update", func() bool { return version(r, "ctr", "v2", ios) == 2 })

	m := r.Lookup("ctr", "v2", ios)
	silent := map[string]any{"model": "ctr", "model_version": "v2", "segment": ios, "x": xs, "y": ys(0.7),
		"version": 3, "silent": true}
	pub.send(silent)
	eventually(t, 3*time.Second, "index check", func() bool { return version(r, "ctr", "v2", ios) == 3 })
	if m.Version != 2 || r.Calibrate("ctr", "v2", ios, 1) != 0.7 {
		t.Fatal("the new map must replace, not mutate, the old one")
	}
}

func TestCorruptValueKeepsThePreviousMap(t *testing.T) {
	srv := startRedis(t)
	pub := startPublisher(t, srv.url(), "it")
	pub.publish("ctr", "v2", ios, xs, ys(0.5), 1)
	r := connect(t, srv.url(), WithCheckInterval(200*time.Millisecond))
	field := Field("ctr", "v2", SegmentKey(ios))
	pub.send(map[string]any{"raw": `{"schema":2,"model":"ctr"`, "field": field, "version": 2})
	eventually(t, 2*time.Second, "a rejection", func() bool { return r.Stats().Rejected == 1 })
	foreign := `{"schema":2,"model":"ctr","model_version":"v1","segment":{"platform":"ios"},"version":3,` +
		`"x":[0,1],"y":[0,1]}`
	pub.send(map[string]any{"raw": foreign, "field": field, "version": 3})
	eventually(t, 2*time.Second, "two rejections", func() bool { return r.Stats().Rejected >= 2 })
	time.Sleep(500 * time.Millisecond) // two index checks: a refused version is not refetched
	if st := r.Stats(); st.Rejected != 2 || version(r, "ctr", "v2", ios) != 1 {
		t.Fatalf("rejected %d, serving version %d", st.Rejected, version(r, "ctr", "v2", ios))
	}
	pub.publish("ctr", "v2", ios, xs, ys(0.9), 4)
	eventually(t, 2*time.Second, "a valid map after a corrupt one", func() bool {
		return version(r, "ctr", "v2", ios) == 4
	})
}

func TestServesThroughRedisOutageAndRecovers(t *testing.T) {
	srv := startRedis(t)
	pub := startPublisher(t, srv.url(), "it")
	pub.publish("ctr", "v2", ios, xs, ys(0.5), 5)
	r := connect(t, srv.url(), WithCheckInterval(200*time.Millisecond), WithSocketTimeout(200*time.Millisecond),
		WithMaxBackoff(200*time.Millisecond))
	srv.kill()
	eventually(t, 3*time.Second, "the outage noticed", func() bool { return !r.Stats().Connected })
	for range 100 {
		if got := r.Calibrate("ctr", "v2", ios, 0.5); got != 0.25 {
			t.Fatalf("during the outage: got %v, want the cached map's 0.25", got)
		}
	}
	if st := r.Stats(); st.RedisErrors == 0 || st.LastError == "" {
		t.Fatalf("stats during the outage: %+v", st)
	}
	srv.start() // back empty: the cached map keeps serving, counted as unindexed
	eventually(t, 5*time.Second, "reconnect", func() bool { return r.Stats().Connected })
	eventually(t, 2*time.Second, "unindexed count", func() bool { return r.Stats().Unindexed == 1 })
	if version(r, "ctr", "v2", ios) != 5 {
		t.Fatal("an empty Redis must not drop the cached map")
	}
	pub2 := startPublisher(t, srv.url(), "it")
	pub2.publish("ctr", "v2", ios, xs, ys(0.9), 1) // a namespace rebuilt from scratch: the index is authoritative
	eventually(t, 3*time.Second, "the rebuilt map", func() bool { return version(r, "ctr", "v2", ios) == 1 })
}

func TestConcurrentCalibrateDuringUpdates(t *testing.T) {
	srv := startRedis(t)
	pub := startPublisher(t, srv.url(), "it")
	pub.publish("ctr", "v2", ios, xs, ys(0.5), 1)
	r := connect(t, srv.url(), WithCheckInterval(50*time.Millisecond))
	done := make(chan struct{})
	errs := make(chan float64, 8)
	for range 8 {
		go func() {
			for {
				select {
				case <-done:
					errs <- -1
					return
				default:
				}
				// every published map has y(1) = top in (0.5, 1]: never the raw score, never a torn map
				if got := r.Calibrate("ctr", "v2", map[string]string{"platform": "ios", "x": "y"}, 1); got < 0.5 {
					errs <- got
					return
				}
			}
		}()
	}
	for v := int64(2); v <= 30; v++ {
		pub.publish("ctr", "v2", ios, xs, ys(0.5+float64(v)/60), v)
	}
	eventually(t, 2*time.Second, "the last update", func() bool { return version(r, "ctr", "v2", ios) == 30 })
	close(done)
	for range 8 {
		if got := <-errs; got != -1 {
			t.Fatalf("a concurrent Calibrate returned %v", got)
		}
	}
}

func TestStartsWhileRedisIsDownAndDropsDeletedFields(t *testing.T) {
	srv := startRedis(t)
	srv.kill()
	r := connect(t, srv.url(), WithStartTimeout(300*time.Millisecond), WithCheckInterval(200*time.Millisecond),
		WithMaxBackoff(200*time.Millisecond), WithSocketTimeout(200*time.Millisecond))
	if got := r.Calibrate("ctr", "v2", ios, 0.5); got != 0.5 || r.Stats().Misses != 1 || r.Stats().Connected {
		t.Fatalf("before Redis is up: got %v, stats %+v", got, r.Stats())
	}
	srv.start()
	pub := startPublisher(t, srv.url(), "it")
	pub.publish("ctr", "v2", ios, xs, ys(0.5), 1)
	pub.publish("ctr", "v2", map[string]string{}, xs, ys(0.9), 1)
	eventually(t, 5*time.Second, "the maps once Redis is up", func() bool { return r.Stats().Maps == 2 })
	// An index check must see both fields: a deletion is a field seen leaving the index.
	time.Sleep(600 * time.Millisecond)
	pub.send(map[string]any{"delete": Field("ctr", "v2", SegmentKey(ios))})
	eventually(t, 3*time.Second, "the deleted field dropped", func() bool { return r.Stats().Maps == 1 })
	if got := r.Calibrate("ctr", "v2", ios, 1); got != 0.9 {
		t.Fatalf("after the delete the model-wide map serves: got %v", got)
	}
}
