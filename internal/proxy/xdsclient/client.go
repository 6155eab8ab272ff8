// Package xdsclient is the proxy's side of ADS: one delta xDS stream to
// the control plane that subscribes to clusters and listeners (wildcard)
// and to the endpoints and routes they name, ACKs what applies and NACKs
// what does not (with the error), and reconnects with backoff. Nothing is
// applied until a whole response is accepted; while the control plane is
// away the proxy keeps the last accepted state.
package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"
)

// Types the proxy subscribes to, in Istio's push order.
// Secrets are the TLS credentials of a gateway's HTTPS servers
// (credentialName), asked for by name as listeners refer to them.
var Types = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType, resource.SecretType}

// wildcard types are subscribed without names.
var wildcard = map[string]bool{resource.ClusterType: true, resource.ListenerType: true}

// State is every accepted resource: type URL -> name -> resource.
type State map[string]map[string]*anypb.Any

// clone copies the maps (resources themselves are immutable).
func (s State) clone() State {
	out := make(State, len(s))
	for t, m := range s {
		out[t] = maps.Clone(m)
	}
	return out
}

// Applier turns a candidate state into running configuration.
type Applier interface {
	// Apply validates and, if valid, installs the whole state; changed is
	// the type that differs from the last call. It returns the endpoint and
	// route names the new state needs. An error rejects the state: it is
	// NACKed and nothing of it is used.
	Apply(st State, changed string) (want map[string][]string, err error)
}

// Config of a client.
type Config struct {
	Node *core.Node
	// Conn is the connection to the control plane (TLS and all).
	Conn *grpc.ClientConn
	// CallContext decorates each stream's context (token, cluster ID).
	CallContext func(context.Context) (context.Context, error)
	Applier     Applier
	Log         *slog.Logger
	// Extra are more types subscribed without names, after Types (Istio's
	// name table, NDS, when the sidecar answers DNS).
	Extra []string
}

// Client keeps one ADS stream alive.
type Client struct {
	cfg Config

	mu        sync.Mutex
	state     State                        // accepted
	versions  map[string]map[string]string // type -> name -> version accepted
	want      map[string][]string          // non-wildcard subscriptions
	connected bool
	acks      map[string]int
	nacks     map[string]int
	lastNACK  string
}

// New makes a client; Run starts it.
func New(cfg Config) *Client {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Client{cfg: cfg, state: State{}, versions: map[string]map[string]string{}, want: map[string][]string{},
		acks: map[string]int{}, nacks: map[string]int{}}
}

// Status is what the admin page shows of the stream.
type Status struct {
	Connected bool           `json:"connected"`
	ACKs      map[string]int `json:"acks"`
	NACKs     map[string]int `json:"nacks"`
	LastNACK  string         `json:"last_nack,omitempty"`
}

// Status reports the stream.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Status{Connected: c.connected, ACKs: maps.Clone(c.acks), NACKs: maps.Clone(c.nacks), LastNACK: c.lastNACK}
}

// Reconnect backoff: 500 ms doubling to 2 s, each wait jittered between
// half and all of it, so the proxies of a control plane replica that went
// away do not all come back at once, and all are back within 5 s of a
// control plane that was gone for minutes (a remote's proxies wait for
// the east-west gateway to find it first). A retry costs a dial to the
// istiod Service, refused while it has no endpoints.
const (
	retryBase = 500 * time.Millisecond
	retryMax  = 2 * time.Second
)

// Run streams until ctx ends, reconnecting with backoff. A new stream
// waits for the connection to be ready (the connection redials with its
// own backoff) rather than failing at once while it is down: a replica
// that went away leaves its proxies one dial, not one backoff step, from
// another.
func (c *Client) Run(ctx context.Context) error {
	backoff := retryBase
	for {
		start := time.Now()
		err := c.stream(ctx)
		c.setConnected(false)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > time.Minute {
			backoff = retryBase
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		c.cfg.Log.Warn("xDS stream closed; serving the last accepted configuration", "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(2*backoff, retryMax)
	}
}

func (c *Client) setConnected(v bool) {
	c.mu.Lock()
	c.connected = v
	c.mu.Unlock()
}

func (c *Client) stream(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.cfg.CallContext != nil {
		var err error
		if ctx, err = c.cfg.CallContext(ctx); err != nil {
			return err
		}
	}
	s, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(c.cfg.Conn).DeltaAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	// One goroutine sends, so requests never interleave.
	out := make(chan *discoverygrpc.DeltaDiscoveryRequest, 16)
	sendErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case r := <-out:
				if err := s.Send(r); err != nil {
					sendErr <- err
					return
				}
			}
		}
	}()
	c.mu.Lock()
	// (Re)subscribe to everything, telling the server what we already have.
	for i, t := range append(slices.Clone(Types), c.cfg.Extra...) {
		req := &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: t, InitialResourceVersions: copyVersions(c.versions[t])}
		if i == 0 {
			req.Node = c.cfg.Node
		}
		if !wildcard[t] && !slices.Contains(c.cfg.Extra, t) {
			req.ResourceNamesSubscribe = slices.Clone(c.want[t])
			if len(req.ResourceNamesSubscribe) == 0 {
				continue
			}
		}
		out <- req
	}
	c.mu.Unlock()
	c.setConnected(true)
	for {
		resp, err := s.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("control plane closed the stream")
			}
			return err
		}
		select {
		case err := <-sendErr:
			return err
		default:
		}
		for _, r := range c.handle(resp) {
			select {
			case out <- r:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

func copyVersions(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// handle applies one response and returns the ACK or NACK, plus any
// subscription changes the new state calls for.
func (c *Client) handle(resp *discoverygrpc.DeltaDiscoveryResponse) []*discoverygrpc.DeltaDiscoveryRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := resp.GetTypeUrl()
	cand := c.state.clone()
	m := cand[t]
	if m == nil {
		m = map[string]*anypb.Any{}
		cand[t] = m
	}
	versions := copyVersions(c.versions[t])
	if versions == nil {
		versions = map[string]string{}
	}
	var err error
	for _, r := range resp.GetResources() {
		if r.GetResource() == nil || r.GetResource().GetTypeUrl() != t {
			err = fmt.Errorf("resource %q: type %q in a %s response", r.GetName(), r.GetResource().GetTypeUrl(), t)
			break
		}
		m[r.GetName()] = r.GetResource()
		versions[r.GetName()] = r.GetVersion()
	}
	for _, name := range resp.GetRemovedResources() {
		delete(m, name)
		delete(versions, name)
	}
	var want map[string][]string
	if err == nil {
		want, err = c.cfg.Applier.Apply(cand, t)
	}
	ack := &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce()}
	if err != nil {
		c.nacks[short(t)]++
		c.lastNACK = fmt.Sprintf("%s: %v", short(t), err)
		c.cfg.Log.Error("xDS update rejected (NACK); keeping the previous configuration", "type", short(t), "err", err)
		ack.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		return []*discoverygrpc.DeltaDiscoveryRequest{ack}
	}
	c.acks[short(t)]++
	c.state = cand
	c.versions[t] = versions
	reqs := []*discoverygrpc.DeltaDiscoveryRequest{ack}
	for _, typ := range Types {
		if wildcard[typ] {
			continue
		}
		names := want[typ]
		slices.Sort(names)
		names = slices.Compact(names)
		sub, unsub := diff(c.want[typ], names)
		if len(sub)+len(unsub) == 0 {
			continue
		}
		c.want[typ] = names
		for _, n := range unsub {
			delete(c.state[typ], n)
			delete(c.versions[typ], n)
		}
		reqs = append(reqs, &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typ, ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub})
	}
	return reqs
}

// diff lists names added to and removed from a sorted set.
func diff(old, nu []string) (add, del []string) {
	for _, n := range nu {
		if _, found := slices.BinarySearch(old, n); !found {
			add = append(add, n)
		}
	}
	for _, o := range old {
		if _, found := slices.BinarySearch(nu, o); !found {
			del = append(del, o)
		}
	}
	return add, del
}

func short(t string) string {
	switch t {
	case resource.ClusterType:
		return "cds"
	case resource.EndpointType:
		return "eds"
	case resource.ListenerType:
		return "lds"
	case resource.RouteType:
		return "rds"
	case resource.SecretType:
		return "sds"
	}
	return t
}

// Resources returns the accepted resources and their versions.
func (c *Client) Resources() (State, map[string]map[string]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := make(map[string]map[string]string, len(c.versions))
	for t, m := range c.versions {
		v[t] = copyVersions(m)
	}
	return c.state.clone(), v
}
