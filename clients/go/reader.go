package reader

import (
	"context"
	"encoding/binary"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Option configures Connect.
type Option func(*config)

type config struct {
	prefix          string
	segmentBy       map[string][][]string
	fallbackVersion map[string]string
	checkInterval   time.Duration
	startTimeout    time.Duration
	socketTimeout   time.Duration
	maxBackoff      time.Duration
	resolveCache    int
}

// WithPrefix sets the key namespace (default "recal").
func WithPrefix(prefix string) Option { return func(c *config) { c.prefix = prefix } }

// WithSegmentBy sets a model's coarser fallback levels, tried after the request's own segment.
func WithSegmentBy(model string, levels ...[]string) Option {
	return func(c *config) { c.segmentBy[model] = levels }
}

// WithFallbackVersion serves a model's requests that have no map for their model version from this
// version's maps (counted as fallback hits). Without it such requests get the raw score (a miss).
func WithFallbackVersion(model, modelVersion string) Option {
	return func(c *config) { c.fallbackVersion[model] = modelVersion }
}

// WithCheckInterval sets the period of the index check that heals missed notifications (default 5 s).
func WithCheckInterval(d time.Duration) Option { return func(c *config) { c.checkInterval = d } }

// WithStartTimeout bounds how long Connect waits for the first full load (default 5 s).
func WithStartTimeout(d time.Duration) Option { return func(c *config) { c.startTimeout = d } }

// WithSocketTimeout sets Redis dial/read/write timeouts (default 2 s).
func WithSocketTimeout(d time.Duration) Option { return func(c *config) { c.socketTimeout = d } }

// WithMaxBackoff caps the reconnect backoff (default 5 s).
func WithMaxBackoff(d time.Duration) Option { return func(c *config) { c.maxBackoff = d } }

// WithResolveCacheSize bounds the memo of resolved (model, version, segment) lookups (default 100,000).
func WithResolveCacheSize(n int) Option { return func(c *config) { c.resolveCache = n } }

type entry struct {
	field    string
	m        *Map
	fallback bool // served from the configured fallback version
}

// snapshot is immutable once published, except for the resolution memo, which only grows.
type snapshot struct {
	maps     map[string]*Map
	dims     map[string][]string // per model: every dim its maps or its segment_by name, sorted
	mu       sync.RWMutex
	resolved map[string]*entry // nil entry: nothing serves that request
}

func newSnapshot(maps map[string]*Map, segmentBy map[string][][]string) *snapshot {
	seen := map[string]map[string]struct{}{}
	add := func(model, dim string) {
		if seen[model] == nil {
			seen[model] = map[string]struct{}{}
		}
		seen[model][dim] = struct{}{}
	}
	for _, m := range maps {
		for d := range m.Segment {
			add(m.Model, d)
		}
	}
	for model, levels := range segmentBy {
		for _, level := range levels {
			for _, d := range level {
				add(model, d)
			}
		}
	}
	dims := make(map[string][]string, len(seen))
	for model, set := range seen {
		for d := range set {
			dims[model] = append(dims[model], d)
		}
		slices.Sort(dims[model])
	}
	return &snapshot{maps: maps, dims: dims, resolved: map[string]*entry{}}
}

// Reader is safe for concurrent use.
type Reader struct {
	cfg   config
	opts  *redis.Options
	state atomic.Pointer[snapshot]

	misses, fallbackHits, rejected, errors, reloads atomic.Int64
	connected                                       atomic.Bool
	syncedAtNs, unindexed                           atomic.Int64
	lastError                                       atomic.Value // string

	synced    chan struct{}
	syncOnce  sync.Once
	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// Connect parses url (redis://host:port/db), starts the background sync and waits up to the start
// timeout for the first full load. Redis being unreachable is not an error: the reader serves raw scores
// (counted as misses) until it connects. Only a malformed URL is.
func Connect(ctx context.Context, url string, options ...Option) (*Reader, error) {
	cfg := config{
		prefix: "recal", segmentBy: map[string][][]string{}, fallbackVersion: map[string]string{},
		checkInterval: 5 * time.Second, startTimeout: 5 * time.Second, socketTimeout: 2 * time.Second,
		maxBackoff: 5 * time.Second, resolveCache: 100_000,
	}
	for _, o := range options {
		o(&cfg)
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = cfg.socketTimeout, cfg.socketTimeout, cfg.socketTimeout
	opts.MaxRetries = 1 // one immediate retry; beyond that the sync loop's backoff reconnects
	opts.PoolSize = 2
	r := &Reader{cfg: cfg, opts: opts, synced: make(chan struct{}), done: make(chan struct{})}
	r.state.Store(newSnapshot(map[string]*Map{}, nil))
	r.lastError.Store("")
	runCtx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.run(runCtx)
	r.WaitSynced(ctx, cfg.startTimeout)
	return r, nil
}

// WaitSynced waits until the first full load has completed, ctx ends or timeout passes.
func (r *Reader) WaitSynced(ctx context.Context, timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-r.synced:
		return true
	case <-ctx.Done():
	case <-t.C:
	}
	return false
}

// Close stops the background sync; the reader keeps serving its cached maps.
func (r *Reader) Close() error {
	r.closeOnce.Do(func() {
		r.cancel()
		<-r.done
	})
	return nil
}

// Calibrate returns the calibrated score, or the raw score when no map serves the request.
func (r *Reader) Calibrate(model, modelVersion string, segment map[string]string, score float64) float64 {
	e := r.Lookup(model, modelVersion, segment)
	if e == nil {
		return score
	}
	return e.Apply(score)
}

// CalibrateBatch writes the calibrated scores into dst (allocated when nil or short) and returns it;
// the raw scores are copied when no map serves the request.
func (r *Reader) CalibrateBatch(model, modelVersion string, segment map[string]string,
	scores, dst []float64) []float64 {
	if cap(dst) < len(scores) {
		dst = make([]float64, len(scores))
	}
	dst = dst[:len(scores)]
	e := r.Lookup(model, modelVersion, segment)
	if e == nil {
		copy(dst, scores)
	} else {
		e.ApplyBatch(dst, scores)
	}
	return dst
}

// Lookup is the map that serves (model, modelVersion, segment) after the fallback chain, or nil (a miss).
// Misses and fallback-version hits are counted.
func (r *Reader) Lookup(model, modelVersion string, segment map[string]string) *Map {
	snap := r.state.Load()
	var buf [256]byte
	key := memoKey(buf[:0], model, modelVersion, segment, snap.dims[model])
	snap.mu.RLock()
	e, ok := snap.resolved[string(key)]
	snap.mu.RUnlock()
	if !ok {
		e = r.resolve(snap, model, modelVersion, segment)
		snap.mu.Lock()
		if len(snap.resolved) >= r.cfg.resolveCache {
			clear(snap.resolved) // bounded memory under high-cardinality segments; hot keys re-resolve
		}
		snap.resolved[string(key)] = e
		snap.mu.Unlock()
	}
	switch {
	case e == nil:
		r.misses.Add(1)
		return nil
	case e.fallback:
		r.fallbackHits.Add(1)
	}
	return e.m
}

func (r *Reader) resolve(snap *snapshot, model, modelVersion string, segment map[string]string) *entry {
	chain := FallbackChain(segment, r.cfg.segmentBy[model])
	find := func(version string, fallback bool) *entry {
		for _, k := range chain {
			f := Field(model, version, k)
			if m, ok := snap.maps[f]; ok {
				return &entry{field: f, m: m, fallback: fallback}
			}
		}
		return nil
	}
	if e := find(modelVersion, false); e != nil {
		return e
	}
	if fb, ok := r.cfg.fallbackVersion[model]; ok && fb != modelVersion {
		return find(fb, true)
	}
	return nil
}

// memoKey encodes what the resolution depends on, collision-free (length-prefixed): model, version, the
// segment's values of the dims any map of the model (or its segment_by) uses, and whether the segment has
// other dims (then no map has exactly its dims). Map lookups, no iteration over the caller's map.
func memoKey(b []byte, model, modelVersion string, segment map[string]string, dims []string) []byte {
	put := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	put(model)
	put(modelVersion)
	found := 0
	for _, d := range dims {
		if v, ok := segment[d]; ok {
			b = append(b, 1)
			put(v)
			found++
		} else {
			b = append(b, 0)
		}
	}
	if found < len(segment) {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	return b
}

// Age of one cached map.
type Age struct {
	Map  time.Duration // since the map's updated_at: how old the calibration is (0 if it does not say)
	Sync time.Duration // since the reader last confirmed its cache against the index
}

// Stats is a point-in-time view of the reader.
type Stats struct {
	Maps         int
	Ages         map[string]Age // by field
	Misses       int64          // requests served the raw score
	FallbackHits int64          // requests served from the configured fallback version
	Rejected     int64          // stored values refused (invalid, or not belonging to their key)
	RedisErrors  int64
	Reloads      int64 // maps installed
	Connected    bool
	Synced       bool
	Unindexed    int // cached maps the index lacks, e.g. Redis restarted empty
	LastError    string
}

// Stats reports what the reader holds and what it counted.
func (r *Reader) Stats() Stats {
	snap := r.state.Load()
	now := time.Now()
	var sync time.Duration
	if at := r.syncedAtNs.Load(); at > 0 {
		sync = now.Sub(time.Unix(0, at))
	}
	ages := make(map[string]Age, len(snap.maps))
	for f, m := range snap.maps {
		var age time.Duration
		if m.UpdatedAtMs > 0 {
			age = now.Sub(time.UnixMilli(m.UpdatedAtMs))
		}
		ages[f] = Age{Map: age, Sync: sync}
	}
	lastError, _ := r.lastError.Load().(string)
	synced := false
	select {
	case <-r.synced:
		synced = true
	default:
	}
	return Stats{
		Maps: len(snap.maps), Ages: ages, Misses: r.misses.Load(), FallbackHits: r.fallbackHits.Load(),
		Rejected: r.rejected.Load(), RedisErrors: r.errors.Load(), Reloads: r.reloads.Load(),
		Connected: r.connected.Load(), Synced: synced, Unindexed: int(r.unindexed.Load()),
		LastError: lastError,
	}
}
