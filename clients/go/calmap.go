package reader

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync/atomic"
)

// Schema is the map layout version this reader understands.
const Schema = 2

// MaxKnots bounds a map's size, as the publisher does.
const MaxKnots = 4096

// Map is one validated calibration map: y = piecewise-linear interpolation of (X, Y), clamped outside.
type Map struct {
	Model        string
	ModelVersion string
	Segment      map[string]string
	Version      int64 // the publish fence: a newer map has a greater version
	UpdatedAtMs  int64 // 0 when the map does not say
	X, Y         []float64
	grid         atomic.Pointer[grid] // built on the first large batch
}

// ParseMap validates a stored map value. Unknown fields are ignored; anything a reader must not apply
// (wrong schema or types, NaN/inf, non-monotone or mismatched knots) is an error.
func ParseMap(raw []byte) (*Map, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	m := &Map{}
	var schema int64
	var err error
	for _, f := range []struct {
		name string
		dst  func(json.RawMessage) error
	}{
		{"schema", func(v json.RawMessage) (e error) { schema, e = jsonInt(v); return }},
		{"model", func(v json.RawMessage) (e error) { m.Model, e = jsonString(v); return }},
		{"model_version", func(v json.RawMessage) (e error) { m.ModelVersion, e = jsonString(v); return }},
		{"segment", func(v json.RawMessage) (e error) { m.Segment, e = jsonSegment(v); return }},
		{"version", func(v json.RawMessage) (e error) { m.Version, e = jsonInt(v); return }},
		{"x", func(v json.RawMessage) (e error) { m.X, e = jsonNumbers(v); return }},
		{"y", func(v json.RawMessage) (e error) { m.Y, e = jsonNumbers(v); return }},
	} {
		v, ok := doc[f.name]
		if !ok {
			return nil, fmt.Errorf("missing field %q", f.name)
		}
		if err = f.dst(v); err != nil {
			return nil, fmt.Errorf("field %q: %w", f.name, err)
		}
	}
	if schema != Schema {
		return nil, fmt.Errorf("unsupported schema %d (expected %d)", schema, Schema)
	}
	if m.Model == "" || m.ModelVersion == "" {
		return nil, errors.New("model and model_version must be non-empty")
	}
	if m.Version < 0 {
		return nil, fmt.Errorf("version must be >= 0, got %d", m.Version)
	}
	if err := checkOptional(doc); err != nil {
		return nil, err
	}
	if v, ok := doc["updated_at"]; ok {
		m.UpdatedAtMs, _ = jsonInt(v)
	}
	return m, checkKnots(m.X, m.Y)
}

// checkOptional validates the optional fields a map may carry, as the Python reader does: unknown
// fields are ignored, but a known one of the wrong type makes the map invalid.
func checkOptional(doc map[string]json.RawMessage) error {
	count := func(v json.RawMessage) error {
		f, err := jsonNumber(v)
		if err == nil && f < 0 {
			err = fmt.Errorf("must be >= 0, got %v", f)
		}
		return err
	}
	integer := func(v json.RawMessage) error { _, err := jsonInt(v); return err }
	checks := map[string]func(json.RawMessage) error{
		"updated_at":    integer,
		"last_event_ms": integer,
		"method":        func(v json.RawMessage) error { _, err := jsonString(v); return err },
		"n":             count,
		"positives":     count,
		"platt":         checkPlatt,
		"metrics":       checkMeta,
		"prior":         func(v json.RawMessage) error { _, err := jsonObject(v); return err }, // provenance only
	}
	for name, check := range checks {
		if v, ok := doc[name]; ok {
			if err := check(v); err != nil {
				return fmt.Errorf("field %q: %w", name, err)
			}
		}
	}
	return nil
}

func jsonObject(v json.RawMessage) (map[string]json.RawMessage, error) {
	var obj map[string]json.RawMessage
	if len(v) == 0 || v[0] != '{' {
		return nil, errors.New("not an object")
	}
	return obj, json.Unmarshal(v, &obj)
}

func checkPlatt(v json.RawMessage) error {
	obj, err := jsonObject(v)
	if err != nil {
		return err
	}
	for _, k := range []string{"a", "b"} {
		p, ok := obj[k]
		if !ok {
			return fmt.Errorf("missing %q", k)
		}
		if _, err := jsonNumber(p); err != nil {
			return err
		}
	}
	return nil
}

// checkMeta: an object of finite numbers or strings (metrics, prior).
func checkMeta(v json.RawMessage) error {
	obj, err := jsonObject(v)
	if err != nil {
		return err
	}
	for k, e := range obj {
		if _, serr := jsonString(e); serr == nil {
			continue
		}
		if _, nerr := jsonNumber(e); nerr != nil {
			return fmt.Errorf("%q must be a finite number or a string", k)
		}
	}
	return nil
}

// ParseStored is ParseMap plus the check that the value belongs to the field it is stored under.
func ParseStored(field string, raw []byte) (*Map, error) {
	m, err := ParseMap(raw)
	if err != nil {
		return nil, err
	}
	if own := Field(m.Model, m.ModelVersion, SegmentKey(m.Segment)); own != field {
		return nil, fmt.Errorf("value under %q belongs to %q", field, own)
	}
	return m, nil
}

func checkKnots(x, y []float64) error {
	if len(x) != len(y) {
		return fmt.Errorf("x and y lengths differ: %d vs %d", len(x), len(y))
	}
	if len(x) < 2 || len(x) > MaxKnots {
		return fmt.Errorf("need 2..%d knots, got %d", MaxKnots, len(x))
	}
	for i := range x {
		if x[i] < 0 || x[i] > 1 || y[i] < 0 || y[i] > 1 {
			return errors.New("knots must lie in [0, 1]")
		}
		if i > 0 && !(x[i] > x[i-1]) {
			return errors.New("x must be strictly increasing")
		}
		if i > 0 && !(y[i] >= y[i-1]) {
			return errors.New("y must be non-decreasing (map is not monotone)")
		}
	}
	return nil
}

func jsonInt(v json.RawMessage) (int64, error) {
	// JSON integer syntax only: 2.0, 2e0, "2" and true are not integers.
	if bytes.ContainsAny(v, ".eE\"") || len(v) == 0 || (v[0] != '-' && (v[0] < '0' || v[0] > '9')) {
		return 0, fmt.Errorf("not an integer: %s", v)
	}
	return strconv.ParseInt(string(v), 10, 64)
}

func jsonString(v json.RawMessage) (string, error) {
	var s string
	if len(v) == 0 || v[0] != '"' {
		return "", fmt.Errorf("not a string: %s", v)
	}
	err := json.Unmarshal(v, &s)
	return s, err
}

func jsonSegment(v json.RawMessage) (map[string]string, error) {
	var raw map[string]json.RawMessage
	if len(v) == 0 || v[0] != '{' {
		return nil, errors.New("not an object")
	}
	if err := json.Unmarshal(v, &raw); err != nil {
		return nil, err
	}
	seg := make(map[string]string, len(raw))
	for k, rv := range raw {
		s, err := jsonString(rv)
		if err != nil {
			return nil, fmt.Errorf("segment value %q: %w", k, err)
		}
		seg[k] = s
	}
	return seg, nil
}

func jsonNumbers(v json.RawMessage) ([]float64, error) {
	if len(v) == 0 || v[0] != '[' {
		return nil, errors.New("not an array")
	}
	var out []knot
	if err := json.Unmarshal(v, &out); err != nil {
		return nil, err
	}
	return exactFloats(out), nil
}

// knot decodes one array element in place (no per-element copy); null, strings and booleans fail.
type knot float64

func (k *knot) UnmarshalJSON(b []byte) error {
	f, err := jsonNumber(b)
	*k = knot(f)
	return err
}

// exactFloats copies into an exact-size slice: the decoder's grown capacity would stay cached.
func exactFloats(k []knot) []float64 {
	out := make([]float64, len(k))
	for i, v := range k {
		out[i] = float64(v)
	}
	return out
}

// jsonNumber is a finite JSON number (true, "1" and null are not numbers).
func jsonNumber(v json.RawMessage) (float64, error) {
	if len(v) == 0 || (v[0] != '-' && (v[0] < '0' || v[0] > '9')) {
		return 0, fmt.Errorf("not a number: %s", v)
	}
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil || math.IsInf(f, 0) {
		return 0, fmt.Errorf("not a finite number: %s", v)
	}
	return f, nil
}

// Apply is np.interp(score, X, Y) to the last bit: NaN in gives NaN out, clamped outside [X[0], X[-1]].
func (m *Map) Apply(score float64) float64 {
	x, y := m.X, m.Y
	n := len(x)
	switch {
	case score != score:
		return score
	case score > x[n-1]:
		return y[n-1]
	case score < x[0]:
		return y[0]
	}
	lo, hi := 0, n-1 // the last knot <= score, as numpy's binary search finds it
	for lo < hi {
		mid := int(uint(lo+hi+1) >> 1)
		if x[mid] <= score {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return interp(x, y, lo, score)
}

// interp is numpy's formula on knot interval j, with x[j] <= score and score < x[j+1] unless j is last.
func interp(x, y []float64, j int, score float64) float64 {
	if j == len(x)-1 || x[j] == score {
		return y[j]
	}
	slope := (y[j+1] - y[j]) / (x[j+1] - x[j])
	// float64(...) forbids fusing into an FMA, which would change the last bit on some CPUs.
	r := float64(slope*(score-x[j])) + y[j]
	if r != r { // an infinite slope: numpy retries from the right knot, then takes a flat step's value
		r = float64(slope*(score-x[j+1])) + y[j+1]
		if r != r && y[j] == y[j+1] {
			r = y[j]
		}
	}
	return r
}

// ApplyBatch writes Apply(scores[i]) into dst[i]; dst must be at least as long as scores.
//
// Large batches find each score's knot interval through a grid uniform in sqrt(score) (dense where CTR
// knots are): cell c = floor(sqrt(s) * cells) is monotone in s, so the last knot <= s lies between the
// last knot of an earlier cell and the last knot of cell c, usually zero or one comparison apart.
func (m *Map) ApplyBatch(dst, scores []float64) {
	dst = dst[:len(scores)]
	if len(scores) < 64 {
		for i, s := range scores {
			dst[i] = m.Apply(s)
		}
		return
	}
	g := m.grid.Load()
	if g == nil {
		g = newGrid(m.X)
		m.grid.Store(g)
	}
	x, y, first := m.X, m.Y, g.first
	lo0, hi0 := x[0], x[len(x)-1]
	cells := float64(len(first) - 1)
	last := len(first) - 2
	for i, s := range scores {
		if !(s > lo0 && s < hi0) { // NaN, the end knots and beyond
			dst[i] = m.Apply(s)
			continue
		}
		c := min(int(math.Sqrt(s)*cells), last)
		lo, hi := max(int(first[c])-1, 0), int(first[c+1])-1
		for lo < hi {
			mid := int(uint(lo+hi+1) >> 1)
			if x[mid] <= s {
				lo = mid
			} else {
				hi = mid - 1
			}
		}
		dst[i] = interp(x, y, lo, s)
	}
}

// grid: first[c] = number of knots in cells before c, for cells+1 boundaries.
type grid struct{ first []uint16 }

func newGrid(x []float64) *grid {
	cells := 64
	for cells < 2*len(x) {
		cells *= 2
	}
	first := make([]uint16, cells+1)
	for _, v := range x {
		first[min(int(math.Sqrt(v)*float64(cells)), cells-1)+1]++
	}
	for c := 1; c <= cells; c++ {
		first[c] += first[c-1]
	}
	return &grid{first: first}
}
