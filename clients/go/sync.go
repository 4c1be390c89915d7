package reader

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	mgetChunk = 1000 // keys per MGET: bounded replies on a large namespace
	maxDrain  = 1000 // notifications folded into one load and one snapshot swap
)

// syncer is the background goroutine's own state; nothing else touches it.
type syncer struct {
	r        *Reader
	client   *redis.Client
	rejected map[string]int64 // field -> index version refused; not refetched until the version moves
}

func (r *Reader) channel() string { return r.cfg.prefix + ":maps:updated" }
func (r *Reader) index() string   { return r.cfg.prefix + ":maps" }
func (r *Reader) key(field string) string {
	return r.cfg.prefix + ":map:" + field
}

func (r *Reader) run(ctx context.Context) {
	defer close(r.done)
	s := &syncer{r: r, rejected: map[string]int64{}}
	failures := 0
	for ctx.Err() == nil {
		s.client = redis.NewClient(r.opts)
		err := s.session(ctx, func() { failures = 0 })
		_ = s.client.Close()
		if ctx.Err() != nil || err == nil {
			return
		}
		r.errors.Add(1)
		r.lastError.Store(err.Error())
		r.connected.Store(false) // last: whoever sees it disconnected also sees the error counted
		slog.Warn("recal map reader: redis unavailable; serving cached maps",
			"error", err, "maps", len(r.state.Load().maps))
		select {
		case <-ctx.Done():
		case <-time.After(backoff(failures, r.cfg.maxBackoff)):
		}
		failures++
	}
}

// backoff is capped exponential with jitter: uniform in [d/2, d], d = min(cap, 50 ms * 2^k).
func backoff(failures int, maxDelay time.Duration) time.Duration {
	d := min(maxDelay, 50*time.Millisecond<<min(failures, 20))
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func (s *syncer) session(ctx context.Context, connected func()) error {
	r := s.r
	ps := s.client.Subscribe(ctx, r.channel()) // before the full sync, so no update falls in between
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	msgs := ps.Channel(redis.WithChannelSize(4 * maxDrain))
	index, err := s.sync(ctx, nil)
	if err != nil {
		return err
	}
	r.connected.Store(true)
	r.lastError.Store("")
	r.syncOnce.Do(func() { close(r.synced) })
	connected()
	check := time.NewTicker(r.cfg.checkInterval)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case msg := <-msgs:
			changed := map[string]int64{}
			s.note(changed, msg)
		drain:
			for len(changed) < maxDrain {
				select {
				case msg = <-msgs:
					s.note(changed, msg)
				default:
					break drain
				}
			}
			if err := s.load(ctx, changed, false, nil); err != nil {
				return err
			}
		case <-check.C:
			if index, err = s.sync(ctx, index); err != nil {
				return err
			}
		}
	}
}

// note records a `{field}:{map_version}` notification the cache does not have yet.
func (s *syncer) note(changed map[string]int64, msg *redis.Message) {
	if msg == nil {
		return
	}
	i := lastColon(msg.Payload)
	v, err := strconv.ParseInt(msg.Payload[i+1:], 10, 64)
	if i < 0 || err != nil {
		slog.Warn("recal map reader: ignoring malformed notification", "payload", msg.Payload)
		return
	}
	field := msg.Payload[:i]
	cur := s.r.state.Load().maps[field]
	if rv, refused := s.rejected[field]; (cur == nil || v > cur.Version) && !(refused && rv == v) {
		changed[field] = max(v, changed[field])
	}
}

func lastColon(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == ':' {
			return i
		}
	}
	return -1
}

// sync compares the index with the cache: loads what differs, drops fields seen leaving the index since
// the previous check of this session. A cached map that is simply absent (first check after reconnecting
// to a Redis that lost its data) keeps serving, counted as unindexed.
func (s *syncer) sync(ctx context.Context, previous map[string]struct{}) (map[string]struct{}, error) {
	r := s.r
	raw, err := s.client.HGetAll(ctx, r.index()).Result()
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	maps := r.state.Load().maps
	index := make(map[string]struct{}, len(raw))
	stale := map[string]int64{}
	for f, vs := range raw {
		index[f] = struct{}{}
		v, err := strconv.ParseInt(vs, 10, 64)
		if err != nil {
			continue // a foreign index value: keep what we serve for that key
		}
		cur := maps[f]
		if rv, refused := s.rejected[f]; (cur == nil || cur.Version != v) && !(refused && rv == v) {
			stale[f] = v
		}
	}
	var deleted []string
	for f := range previous {
		if _, ok := index[f]; !ok {
			deleted = append(deleted, f)
		}
	}
	if err := s.load(ctx, stale, true, deleted); err != nil {
		return nil, err
	}
	unindexed := 0
	for f := range r.state.Load().maps {
		if _, ok := index[f]; !ok {
			unindexed++
		}
	}
	r.unindexed.Store(int64(unindexed))
	r.syncedAtNs.Store(time.Now().UnixNano())
	return index, nil
}

// load fetches and validates fields (field -> expected version) and swaps in one new snapshot.
// Notifications only move a key forward; the index is authoritative, so a lower version there (a
// namespace rebuilt from scratch) replaces the cached map too.
func (s *syncer) load(ctx context.Context, fields map[string]int64, authoritative bool, deleted []string) error {
	r := s.r
	old := r.state.Load().maps
	names := make([]string, 0, len(fields))
	for f := range fields {
		names = append(names, f)
	}
	updates := map[string]*Map{}
	for start := 0; start < len(names); start += mgetChunk {
		chunk := names[start:min(start+mgetChunk, len(names))]
		keys := make([]string, len(chunk))
		for i, f := range chunk {
			keys[i] = r.key(f)
		}
		vals, err := s.client.MGet(ctx, keys...).Result()
		if err != nil {
			return fmt.Errorf("read maps: %w", err)
		}
		for i, f := range chunk {
			raw, ok := vals[i].(string)
			if !ok {
				continue // deleted after the index read; the next check drops it
			}
			m := s.validate(f, raw, fields[f])
			if m == nil {
				continue
			}
			if cur := old[f]; cur == nil || m.Version > cur.Version || (authoritative && m.Version == fields[f]) {
				updates[f] = m
			}
		}
	}
	gone := deleted[:0]
	for _, f := range deleted {
		if _, ok := old[f]; ok {
			gone = append(gone, f)
		}
	}
	if len(updates) == 0 && len(gone) == 0 {
		return nil
	}
	maps := make(map[string]*Map, len(old)+len(updates))
	for f, m := range old {
		maps[f] = m
	}
	for f, m := range updates {
		maps[f] = m
	}
	for _, f := range gone {
		delete(maps, f)
	}
	r.state.Store(newSnapshot(maps, r.cfg.segmentBy))
	r.reloads.Add(int64(len(updates)))
	return nil
}

// validate is the parsed map, or nil (counted, logged once per version) for anything not to apply.
func (s *syncer) validate(field, raw string, version int64) *Map {
	m, err := ParseStored(field, []byte(raw))
	if err != nil {
		s.r.rejected.Add(1)
		s.rejected[field] = version
		slog.Error("recal map reader: rejected map; keeping the previous one",
			"field", field, "version", version, "error", err)
		return nil
	}
	delete(s.rejected, field)
	return m
}
