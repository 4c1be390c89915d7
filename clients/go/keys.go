// Package reader serves calibrated scores from an in-process cache of the calibration maps that the recal
// workers publish to Redis (the schema-2 contract in docs/serving.md).
//
//	r, _ := reader.Connect(ctx, "redis://localhost:6379/0", reader.WithPrefix("recal"))
//	defer r.Close()
//	p := r.Calibrate("ctr", "v2", map[string]string{"platform": "ios"}, 0.013)
//
// The request path reads an immutable snapshot through one atomic pointer: no I/O, no lock on a hit.
// A background goroutine keeps the snapshot fresh from the pub/sub channel plus a periodic index check
// and keeps the last good maps serving while Redis is down.
package reader

import (
	"slices"
	"strings"
)

// ModelWide is the segment key of the model-wide map.
const ModelWide = "*"

var escaper = strings.NewReplacer("%", "%25", "=", "%3D", "|", "%7C", ":", "%3A", "*", "%2A")

// Escape is the key-component escaping applied to model names, model versions, segment dims and values.
func Escape(s string) string {
	if !strings.ContainsAny(s, "%=|:*") {
		return s
	}
	return escaper.Replace(s)
}

// SegmentKey is the canonical key of a segment: sorted escaped dim=value pairs joined by "|", or "*".
// Dims sort by Unicode code point (byte order of UTF-8), as Python's sorted() does.
func SegmentKey(segment map[string]string) string {
	if len(segment) == 0 {
		return ModelWide
	}
	dims := make([]string, 0, len(segment))
	for d := range segment {
		dims = append(dims, d)
	}
	slices.Sort(dims)
	var b strings.Builder
	for i, d := range dims {
		if i > 0 {
			b.WriteByte('|')
		}
		b.WriteString(Escape(d))
		b.WriteByte('=')
		b.WriteString(Escape(segment[d]))
	}
	return b.String()
}

// Field is a map's name in the index, its key suffix and its notification prefix.
func Field(model, modelVersion, segmentKey string) string {
	return Escape(model) + ":" + Escape(modelVersion) + ":" + segmentKey
}

// FallbackChain lists segment keys from finest to coarsest, ending with "*": the segment itself, then each
// level of segmentBy the segment can fill (levels missing a dim are skipped, duplicates dropped).
func FallbackChain(segment map[string]string, segmentBy [][]string) []string {
	keys := make([]string, 0, len(segmentBy)+2)
	add := func(projected map[string]string) {
		if len(projected) == 0 {
			return
		}
		if k := SegmentKey(projected); !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	add(segment)
	for _, dims := range segmentBy {
		projected := make(map[string]string, len(dims))
		complete := true
		for _, d := range dims {
			v, ok := segment[d]
			if !ok {
				complete = false
				break
			}
			projected[d] = v
		}
		if complete {
			add(projected)
		}
	}
	return append(keys, ModelWide)
}
