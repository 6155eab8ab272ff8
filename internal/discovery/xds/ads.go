package xds

import (
	"context"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
)

// The Aggregated Discovery Service, state of the world and incremental,
// served here rather than by go-control-plane's server and snapshot
// cache (whose types and resource names are still used), as istiod serves
// its own. The snapshot cache keeps, for every stream and type, a map of
// every resource it returned, and diffs each new snapshot against each of
// them: with a thousand proxies and a thousand load assignments one
// changed endpoint cost two CPU-seconds of map work, and those maps were
// a quarter of a gigabyte. Here a stream's watch remembers which snapshot
// its client holds for the type; a push compares versions (nothing to do
// when the type did not change) and otherwise sends what changed between
// the two snapshots, computed once for all streams.

// adsConn is one ADS stream.
type adsConn struct {
	delta bool
	ctx   context.Context
	// proxy is the node's ID once its first request arrived, and sync
	// its proxy's record of what was sent and acknowledged.
	proxy string
	sync  *syncState
	// snap is the proxy's latest snapshot, set by pushes; wake says so.
	snap atomic.Pointer[snapshot]
	wake chan struct{}

	// Only the stream's goroutine touches what follows.
	watches map[string]*adsWatch
	nonce   int64
	// sentTypes are the types this stream has sent: a type's first
	// response on a stream is the proxy's (re)connection, not a change
	// reaching it.
	sentTypes map[string]bool
}

// adsWatch is a stream's subscription to one type.
type adsWatch struct {
	wildcard bool
	names    *nameSet // shared: never changed, replaced
	// fresh are names subscribed since the last response.
	fresh map[string]struct{}
	// sent is the snapshot whose resources of the type the client holds
	// (nil: none yet).
	sent *snapshot
	// nonce of the last response; waiting until it is acknowledged: a
	// stream has at most one response of a type in flight.
	nonce   string
	waiting bool
	// first: no response yet; state of the world owes one even if empty.
	first bool
	// initial are the versions a reconnecting incremental client says
	// it has.
	initial map[string]string
}

// pushOrder sends clusters before their load assignments and listeners
// before their routes, as ADS clients expect.
var pushOrder = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType, resource.SecretType}

func (c *adsConn) notify() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// StreamAggregatedResources serves a state-of-the-world ADS stream.
func (s *Server) StreamAggregatedResources(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	first, err := stream.Recv()
	if err != nil {
		return streamEnd(err)
	}
	if strings.HasPrefix(first.GetTypeUrl(), debugPrefix) {
		return s.serveDebug(stream, first)
	}
	recv := func() (*discovery.DiscoveryRequest, error) {
		if r := first; r != nil {
			first = nil
			return r, nil
		}
		return stream.Recv()
	}
	c := newConn(stream.Context(), false)
	send := func(url string, snap *snapshot, chunks []mem.Buffer, _ []string) (string, error) {
		nonce := c.nextNonce()
		version := snap.GetVersion(url)
		head := &discovery.DiscoveryResponse{VersionInfo: version, TypeUrl: url, Nonce: nonce}
		if err := stream.SendMsg(&encodedResponse{head: head, chunks: chunks}); err != nil {
			return "", err
		}
		s.sent(c, url, version, snap)
		return nonce, nil
	}
	return serveStream(s, c, recv, s.sotwRequest, send)
}

// DeltaAggregatedResources serves an incremental ADS stream.
func (s *Server) DeltaAggregatedResources(stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	c := newConn(stream.Context(), true)
	send := func(url string, snap *snapshot, chunks []mem.Buffer, removed []string) (string, error) {
		nonce := c.nextNonce()
		head := &discovery.DeltaDiscoveryResponse{SystemVersionInfo: snap.GetVersion(url), RemovedResources: removed, TypeUrl: url, Nonce: nonce}
		if err := stream.SendMsg(&encodedResponse{head: head, chunks: chunks}); err != nil {
			return "", err
		}
		s.sent(c, url, nonce, snap)
		return nonce, nil
	}
	return serveStream(s, c, stream.Recv, s.deltaRequest, send)
}

// serveStream runs a stream: requests as they come, and after each (or
// a push) whatever the stream's client lacks.
func serveStream[R any](s *Server, c *adsConn, recv func() (R, error), handle func(*adsConn, R) error, send sender) error {
	defer s.closeConn(c)
	// The stream's place among those being served their first
	// configuration, taken before its first response.
	in := &place{a: s.admission}
	defer in.leave()
	reqs := make(chan R, 4)
	errc := make(chan error, 1)
	go func() {
		for {
			r, err := recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case reqs <- r:
			case <-c.ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case <-c.ctx.Done():
			return nil
		case err := <-errc:
			return streamEnd(err)
		case r := <-reqs:
			if err := handle(c, r); err != nil {
				return err
			}
		case <-c.wake:
		case <-in.expired:
			in.leave()
		}
		if !in.enter(c.ctx) {
			return nil
		}
		if err := s.flush(c, send); err != nil {
			return err
		}
		if in.held && c.settled() {
			in.leave()
		}
	}
}

func streamEnd(err error) error {
	if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
		return nil
	}
	return err
}

func newConn(ctx context.Context, delta bool) *adsConn {
	return &adsConn{delta: delta, ctx: ctx, wake: make(chan struct{}, 1), watches: map[string]*adsWatch{}, sentTypes: map[string]bool{}}
}

func (s *Server) closeConn(c *adsConn) {
	for _, w := range c.watches {
		s.sets.release(w.names)
	}
	s.disconnect(c)
}

func (c *adsConn) nextNonce() string {
	c.nonce++
	return strconv.FormatInt(c.nonce, 10)
}

// acked handles the acknowledgement (or rejection) of a response.
// A rejection is recorded whatever its nonce: it is news either way.
func (s *Server) acked(c *adsConn, url string, w *adsWatch, nonce, version, errDetail string) {
	if errDetail != "" {
		s.record(c, url, version, errDetail)
	}
	if !w.waiting || nonce == "" || nonce != w.nonce {
		return // not for the response in flight (a stale one crossed it)
	}
	w.waiting = false
	if errDetail == "" {
		s.record(c, url, version, "")
	}
}

func (c *adsConn) watch(url string) *adsWatch {
	w := c.watches[url]
	if w == nil {
		w = &adsWatch{first: true}
		c.watches[url] = w
	}
	return w
}

// begin checks a request: the stream's first one registers its proxy;
// every one names its type.
func (s *Server) begin(c *adsConn, node *core.Node, url string) error {
	if c.proxy == "" {
		if err := s.connect(c, node); err != nil {
			return err
		}
	}
	if url == "" {
		return status.Error(codes.InvalidArgument, "a request on an aggregated stream must name its type_url")
	}
	return nil
}

// sotwRequest applies a state-of-the-world request: acknowledgement and
// the (whole) list of names wanted.
func (s *Server) sotwRequest(c *adsConn, r *discovery.DiscoveryRequest) error {
	url := r.GetTypeUrl()
	if err := s.begin(c, r.GetNode(), url); err != nil {
		return err
	}
	w := c.watch(url)
	s.acked(c, url, w, r.GetResponseNonce(), r.GetVersionInfo(), r.GetErrorDetail().GetMessage())
	if r.GetResponseNonce() != "" && r.GetResponseNonce() != w.nonce {
		return nil // stale: its names predate the last response
	}
	names := r.GetResourceNames()
	wildcard := len(names) == 0
	if wildcard != w.wildcard {
		w.wildcard = wildcard
		w.sent = nil // send the whole subscription again
	}
	if !wildcard && !w.same(names) {
		// The whole list: what the watch had and the list lacks goes.
		var gone []string
		if w.names != nil {
			want := make(map[string]struct{}, len(names))
			for _, n := range names {
				want[n] = struct{}{}
			}
			for n := range w.names.m {
				if _, ok := want[n]; !ok {
					gone = append(gone, n)
				}
			}
		}
		w.names = s.sets.update(w.names, names, gone, w.subscribe)
	}
	return nil
}

// holdsAll tells whether a reconnecting incremental client said it has
// every name it wants (nothing to send then means it is up to date, not
// that it waits for names that do not exist yet).
func (w *adsWatch) holdsAll() bool {
	if len(w.initial) == 0 {
		return false
	}
	if w.names == nil {
		return w.wildcard
	}
	for n := range w.names.m {
		if _, ok := w.initial[n]; !ok {
			return false
		}
	}
	return true
}

// same tells whether names are the watch's names: state-of-the-world
// clients repeat every name in every request, and usually nothing new.
func (w *adsWatch) same(names []string) bool {
	if len(names) != w.names.len() {
		return false
	}
	for _, n := range names {
		if !w.names.has(n) {
			return false
		}
	}
	return true
}

// subscribe marks a name as newly wanted (before the first response
// everything wanted is sent anyway).
func (w *adsWatch) subscribe(n string) {
	if w.sent == nil {
		return
	}
	if w.fresh == nil {
		w.fresh = map[string]struct{}{}
	}
	w.fresh[n] = struct{}{}
}

// deltaRequest applies an incremental request: acknowledgement and
// names subscribed or unsubscribed.
func (s *Server) deltaRequest(c *adsConn, r *discovery.DeltaDiscoveryRequest) error {
	url := r.GetTypeUrl()
	if err := s.begin(c, r.GetNode(), url); err != nil {
		return err
	}
	_, known := c.watches[url]
	w := c.watch(url)
	if !known {
		// Without names, the first request subscribes to everything.
		w.wildcard = len(r.GetResourceNamesSubscribe()) == 0
		w.initial = r.GetInitialResourceVersions()
	}
	s.acked(c, url, w, r.GetResponseNonce(), r.GetResponseNonce(), r.GetErrorDetail().GetMessage())
	add := r.GetResourceNamesSubscribe()
	if slices.Contains(add, "*") {
		// Copied only then: a sidecar's two thousand names were a copy
		// per request.
		add = slices.DeleteFunc(slices.Clone(add), func(n string) bool { return n == "*" })
		if !w.wildcard {
			w.wildcard, w.sent = true, nil
		}
	}
	var remove []string
	for _, n := range r.GetResourceNamesUnsubscribe() {
		if n == "*" {
			w.wildcard = false
			continue
		}
		remove = append(remove, n)
		delete(w.fresh, n)
	}
	w.names = s.sets.update(w.names, add, remove, w.subscribe)
	return nil
}

// sender sends one response: the snapshot's resources of the type,
// encoded, and (incremental only) names removed; it returns the nonce.
type sender func(url string, snap *snapshot, chunks []mem.Buffer, removed []string) (string, error)

// flush sends each watched type what its client lacks of the proxy's
// latest snapshot, one response in flight per type.
func (s *Server) flush(c *adsConn, send sender) error {
	snap := c.snap.Load()
	if snap == nil {
		return nil
	}
	for _, url := range c.order() {
		w := c.watches[url]
		if w.waiting {
			continue // the acknowledgement will flush again
		}
		same := w.sent != nil && w.sent.GetVersion(url) == snap.GetVersion(url)
		if same && !w.first && len(w.fresh) == 0 {
			w.sent = snap
			continue
		}
		names, removed, list := s.changes(c, url, w, snap)
		full := c.fullState(url)
		owed := w.first && (!c.delta || w.wildcard)
		if len(names) == 0 && len(removed) == 0 && !owed && !(full && !same) {
			if w.first && w.holdsAll() && slices.Contains(pushOrder, url) {
				// A reconnecting client that already holds all it wants.
				s.upToDate(c, url, snap.GetVersion(url))
			}
			w.sent, w.first, w.fresh = snap, false, nil
			continue
		}
		chunks, err := s.chunks(c, url, snap, names, list)
		if err != nil {
			return err
		}
		nonce, err := send(url, snap, chunks, removed)
		if err != nil {
			return err
		}
		w.sent, w.first, w.nonce, w.waiting, w.initial, w.fresh = snap, false, nonce, true, nil, nil
	}
	return nil
}

// fullState tells whether every response of a type carries all the
// client's resources: Listener and Cluster on state-of-the-world streams.
func (c *adsConn) fullState(url string) bool {
	return !c.delta && cachev3.ResourceRequiresFullStateInSotw(url)
}

// order lists the watched types, known ones in pushOrder.
func (c *adsConn) order() []string {
	out := make([]string, 0, len(c.watches))
	for _, url := range pushOrder {
		if _, ok := c.watches[url]; ok {
			out = append(out, url)
		}
	}
	if len(out) < len(c.watches) {
		var rest []string
		for url := range c.watches {
			if !slices.Contains(pushOrder, url) {
				rest = append(rest, url)
			}
		}
		slices.Sort(rest)
		out = append(out, rest...)
	}
	return out
}

// changes lists what a watch's client lacks of snap: names to send and,
// on incremental streams, names to remove.
func (s *Server) changes(c *adsConn, url string, w *adsWatch, snap *snapshot) (names, removed []string, list *wantedList) {
	items := snap.GetResourcesAndTTL(url)
	wanted := func(n string) bool {
		if w.wildcard {
			return true
		}
		return w.names.has(n)
	}
	full := c.fullState(url)
	if (full || w.sent == nil) && len(w.initial) == 0 {
		// Every stream of a view with the same subscription lists the
		// same names: once per push.
		list = s.anys.allWanted(url, snap, w.wildcard, w.names)
		return list.names, nil, list
	}
	if full || w.sent == nil {
		vm := snap.GetVersionMap(url)
		for n := range items {
			if !wanted(n) {
				continue
			}
			if v, ok := w.initial[n]; ok && v == vm[n] && !full {
				continue // a reconnecting client has it already
			}
			names = append(names, n)
		}
		for n := range w.initial {
			if _, ok := items[n]; !ok && wanted(n) {
				removed = append(removed, n)
			}
		}
		slices.Sort(names)
		return names, removed, nil
	}
	d := s.anys.diff(url, w.sent, snap)
	for _, n := range d.changed {
		if wanted(n) {
			names = append(names, n)
		}
	}
	if len(w.fresh) > 0 {
		sent := make(map[string]bool, len(names))
		for _, n := range names {
			sent[n] = true
		}
		for n := range w.fresh {
			if _, ok := items[n]; ok && !sent[n] {
				names = append(names, n)
			}
		}
	}
	if c.delta {
		for _, n := range d.removed {
			if wanted(n) {
				removed = append(removed, n)
			}
		}
	}
	return names, removed, nil
}

// chunks are the encoded resources of a response: the list's shared
// body when the response is a subscription's whole list, else each
// resource's own element.
func (s *Server) chunks(c *adsConn, url string, snap *snapshot, names []string, list *wantedList) ([]mem.Buffer, error) {
	if list != nil {
		b, err := list.body(s.anys, url, snap, c.delta)
		return []mem.Buffer{b}, err
	}
	items, vm := snap.GetResourcesAndTTL(url), snap.GetVersionMap(url)
	out := make([]mem.Buffer, len(names))
	for i, n := range names {
		m, err := s.anys.marshalled(items[n].Resource)
		if err != nil {
			return nil, err
		}
		if c.delta {
			out[i], err = m.deltaChunk(n, vm[n])
		} else {
			out[i], err = m.sotwChunk()
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
