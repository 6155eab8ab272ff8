// Package metricsink pushes a proxy's Istio request metrics to the control
// plane over Envoy's metrics service (envoy.service.metrics.v3
// MetricsService.StreamMetrics), as Envoy's envoy.stat_sinks.metrics_service
// does: one client stream on the xDS connection, the node in the first
// message, then the chosen metric families every flush interval. The
// control plane's live topology view reads them; proxies of every network
// reach it where they get their configuration, so no scraper has to reach
// pods across networks.
package metricsink

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/service/metrics/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
)

// Families are the metric families a proxy pushes: the request counters
// between workloads. The rest stays on the proxy's own /stats/prometheus;
// a topology needs rates and error shares only.
var Families = []string{"istio_requests_total"}

// Sink pushes metrics until its context ends.
type Sink struct {
	Conn grpc.ClientConnInterface
	Node *core.Node
	// Gatherer is the proxy's registry.
	Gatherer prometheus.Gatherer
	// Every is the flush interval (Envoy's stats_flush_interval, 5 s by default).
	Every time.Duration
	// CallContext adds the proxy's credentials to each stream (its token);
	// nil on a plaintext connection.
	CallContext func(context.Context) (context.Context, error)
	Log         *slog.Logger
}

// Run keeps one stream open, reopening it after a failure (2 s growing
// to 30 s, jittered: a control plane that does not serve the metrics
// service is asked again rarely).
func (s *Sink) Run(ctx context.Context) error {
	wait := 2 * time.Second
	for {
		sent, err := s.stream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if sent {
			wait = 2 * time.Second
		}
		s.Log.Debug("metrics stream ended; reopening", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait/2 + rand.N(wait/2)):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// stream sends on one stream until it fails; sent says whether it lived
// past its first push (a first Send succeeds locally even when the
// control plane refuses the service: an older one during an upgrade).
func (s *Sink) stream(ctx context.Context) (sent bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if s.CallContext != nil {
		if ctx, err = s.CallContext(ctx); err != nil {
			return false, err
		}
	}
	st, err := metricsv3.NewMetricsServiceClient(s.Conn).StreamMetrics(ctx, grpc.WaitForReady(true))
	if err != nil {
		return false, err
	}
	tick := time.NewTicker(s.Every)
	defer tick.Stop()
	first := true
	for {
		msg := &metricsv3.StreamMetricsMessage{EnvoyMetrics: s.gather()}
		if first {
			msg.Identifier = &metricsv3.StreamMetricsMessage_Identifier{Node: s.Node}
		}
		if err := st.Send(msg); err != nil {
			if errors.Is(err, io.EOF) { // the server ended the stream: its status says why
				_, err = st.CloseAndRecv()
			}
			return sent, err
		}
		sent = !first
		first = false
		select {
		case <-ctx.Done():
			_, err := st.CloseAndRecv()
			return sent, err
		case <-tick.C:
		}
	}
}

// gather reads the pushed families with their timestamps, as Envoy's
// sink stamps each metric with the flush time.
func (s *Sink) gather() []*dto.MetricFamily {
	all, err := s.Gatherer.Gather()
	if err != nil {
		s.Log.Debug("gather metrics", "err", err)
	}
	now := time.Now().UnixMilli()
	var out []*dto.MetricFamily
	for _, f := range all {
		if !slices.Contains(Families, f.GetName()) {
			continue
		}
		for _, m := range f.Metric {
			m.TimestampMs = &now
		}
		out = append(out, f)
	}
	return out
}
