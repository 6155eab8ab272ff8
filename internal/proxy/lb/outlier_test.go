package lb

import (
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
)

func TestOutlierEjection(t *testing.T) {
	c := &config.Cluster{Name: "outbound|8080||profile", Endpoints: endpoints(1, 1),
		Outlier: &config.Outlier{Consecutive5xx: 3, BaseEjection: 30 * time.Second, MaxEjectionPercent: 50}}
	a, b := c.Endpoints[0].Addr, c.Endpoints[1].Addr
	o := NewOutliers()
	now := time.Unix(1000, 0)
	o.now = func() time.Time { return now }
	o.Report(c, a, Failure5xx)
	o.Report(c, a, Failure5xx)
	o.Report(c, a, Success) // a success resets the count
	o.Report(c, a, Failure5xx)
	o.Report(c, a, Failure5xx)
	if o.Ejected(c, a) {
		t.Fatal("ejected after 2 consecutive 5xx; the threshold is 3")
	}
	o.Report(c, a, GatewayFailure)
	if !o.Ejected(c, a) || o.Ejected(c, b) {
		t.Fatalf("after 3 consecutive 5xx: a ejected %v, b ejected %v", o.Ejected(c, a), o.Ejected(c, b))
	}
	for range 3 {
		o.Report(c, b, Failure5xx)
	}
	if o.Ejected(c, b) {
		t.Error("b ejected too: more than maxEjectionPercent 50% of 2 endpoints")
	}
	now = now.Add(31 * time.Second)
	if o.Ejected(c, a) {
		t.Error("still ejected after baseEjectionTime")
	}
	for range 3 {
		o.Report(c, a, Failure5xx)
	}
	now = now.Add(31 * time.Second)
	if !o.Ejected(c, a) {
		t.Error("a second ejection lasts twice as long")
	}
	c2 := *c
	c2.Outlier = nil
	if o.Ejected(&c2, a) {
		t.Error("no outlier detection, no ejection")
	}
}
