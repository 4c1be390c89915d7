package reader

import (
	"encoding/json"
	"math"
	"os"
	"slices"
	"strconv"
	"testing"
)

type vectors struct {
	Escape      []struct{ Raw, Escaped string }
	SegmentKeys []struct {
		Segment map[string]string
		Key     string
	} `json:"segment_keys"`
	Fields []struct {
		Model        string
		ModelVersion string `json:"model_version"`
		Segment      map[string]string
		Field        string
	}
	FallbackChains []struct {
		Segment   map[string]string
		SegmentBy [][]string `json:"segment_by"`
		Chain     []string
	} `json:"fallback_chains"`
	Apply []struct {
		Name, Field, JSON string
		Scores, Expected  []string
	}
	Invalid  []struct{ Name, Field, JSON string }
	Accepted []struct{ Name, Field, JSON string }
	Lookup   struct {
		Maps            []struct{ Field, JSON string }
		SegmentBy       map[string][][]string `json:"segment_by"`
		FallbackVersion map[string]string     `json:"fallback_version"`
		Queries         []struct {
			Model        string
			ModelVersion string `json:"model_version"`
			Segment      map[string]string
			Served       *string
			Outcome      string
		}
	}
}

func loadVectors(t testing.TB) *vectors {
	raw, err := os.ReadFile("../testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return &v
}

func fromBits(t testing.TB, hex string) float64 {
	u, err := strconv.ParseUint(hex, 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	return math.Float64frombits(u)
}

func TestVectorsKeys(t *testing.T) {
	v := loadVectors(t)
	for _, c := range v.Escape {
		if got := Escape(c.Raw); got != c.Escaped {
			t.Errorf("Escape(%q) = %q, want %q", c.Raw, got, c.Escaped)
		}
	}
	for _, c := range v.SegmentKeys {
		if got := SegmentKey(c.Segment); got != c.Key {
			t.Errorf("SegmentKey(%v) = %q, want %q", c.Segment, got, c.Key)
		}
	}
	for _, c := range v.Fields {
		if got := Field(c.Model, c.ModelVersion, SegmentKey(c.Segment)); got != c.Field {
			t.Errorf("Field = %q, want %q", got, c.Field)
		}
	}
	for _, c := range v.FallbackChains {
		if got := FallbackChain(c.Segment, c.SegmentBy); !slices.Equal(got, c.Chain) {
			t.Errorf("FallbackChain(%v, %v) = %q, want %q", c.Segment, c.SegmentBy, got, c.Chain)
		}
	}
	if len(v.Escape) == 0 || len(v.SegmentKeys) == 0 || len(v.FallbackChains) == 0 {
		t.Fatal("no key vectors")
	}
}

func TestVectorsApplyBitForBit(t *testing.T) {
	v := loadVectors(t)
	if len(v.Apply) == 0 {
		t.Fatal("no apply vectors")
	}
	for _, c := range v.Apply {
		m, err := ParseStored(c.Field, []byte(c.JSON))
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		scores := make([]float64, len(c.Scores))
		for i, b := range c.Scores {
			scores[i] = fromBits(t, b)
		}
		batch := make([]float64, len(scores))
		m.ApplyBatch(batch, scores)
		for i, s := range scores {
			want := fromBits(t, c.Expected[i])
			if got := m.Apply(s); math.Float64bits(got) != math.Float64bits(want) {
				t.Errorf("%s: Apply(%v) = %v (%016x), want %v (%s)", c.Name, s, got, math.Float64bits(got), want, c.Expected[i])
			}
			if math.Float64bits(batch[i]) != math.Float64bits(want) {
				t.Errorf("%s: ApplyBatch at %v = %v, want %v", c.Name, s, batch[i], want)
			}
		}
	}
}

func TestVectorsInvalidRejected(t *testing.T) {
	v := loadVectors(t)
	for _, c := range v.Invalid {
		if m, err := ParseStored(c.Field, []byte(c.JSON)); err == nil {
			t.Errorf("%s: accepted %+v", c.Name, m)
		}
	}
	if len(v.Invalid) < 30 {
		t.Fatalf("only %d invalid vectors", len(v.Invalid))
	}
}

func TestVectorsAccepted(t *testing.T) {
	v := loadVectors(t)
	for _, c := range v.Accepted {
		if _, err := ParseStored(c.Field, []byte(c.JSON)); err != nil {
			t.Errorf("%s: rejected: %v", c.Name, err)
		}
	}
}

// offline is a Reader that never connects: its snapshot is set by the test.
func offline(maps map[string]*Map, options ...Option) *Reader {
	r := &Reader{cfg: config{segmentBy: map[string][][]string{}, fallbackVersion: map[string]string{}, resolveCache: 100}}
	for _, o := range options {
		o(&r.cfg)
	}
	r.state.Store(newSnapshot(maps, r.cfg.segmentBy))
	return r
}

func TestVectorsLookup(t *testing.T) {
	v := loadVectors(t).Lookup
	maps := map[string]*Map{}
	for _, m := range v.Maps {
		parsed, err := ParseStored(m.Field, []byte(m.JSON))
		if err != nil {
			t.Fatal(err)
		}
		maps[m.Field] = parsed
	}
	var opts []Option
	for model, levels := range v.SegmentBy {
		opts = append(opts, WithSegmentBy(model, levels...))
	}
	for model, version := range v.FallbackVersion {
		opts = append(opts, WithFallbackVersion(model, version))
	}
	r := offline(maps, opts...)
	for _, q := range v.Queries {
		for range 2 { // the second time from the resolution memo
			before := r.Stats()
			got := r.Lookup(q.Model, q.ModelVersion, q.Segment)
			after := r.Stats()
			switch {
			case q.Served == nil && got != nil:
				t.Errorf("%+v: served %v, want a miss", q, got)
			case q.Served != nil && got != maps[*q.Served]:
				t.Errorf("%+v: served %+v, want %s", q, got, *q.Served)
			}
			outcome := "hit"
			if after.Misses > before.Misses {
				outcome = "miss"
			} else if after.FallbackHits > before.FallbackHits {
				outcome = "fallback_version"
			}
			if outcome != q.Outcome {
				t.Errorf("%+v: counted %s, want %s", q, outcome, q.Outcome)
			}
		}
		raw := 0.25
		if got := r.Calibrate(q.Model, q.ModelVersion, q.Segment, raw); q.Served == nil && got != raw {
			t.Errorf("%+v: a miss must return the raw score, got %v", q, got)
		}
	}
}
