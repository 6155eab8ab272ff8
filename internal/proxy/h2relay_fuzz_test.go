package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/isthmus-mesh/isthmus/internal/proxy/telemetry"
	"github.com/isthmus-mesh/isthmus/internal/proxy/xdsclient"
)

// errorLog keeps what a proxy logs at level Error: the relay, the loop
// and the handler recover their panics and only log them, which a fuzz
// target must not miss.
type errorLog struct {
	mu   sync.Mutex
	msgs []string
}

func (l *errorLog) Enabled(_ context.Context, level slog.Level) bool { return level >= slog.LevelError }
func (l *errorLog) WithAttrs([]slog.Attr) slog.Handler               { return l }
func (l *errorLog) WithGroup(string) slog.Handler                    { return l }

func (l *errorLog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, "\n%s: %v", a.Key, a.Value)
		return true
	})
	l.mu.Lock()
	l.msgs = append(l.msgs, b.String())
	l.mu.Unlock()
	return nil
}

func (l *errorLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.msgs
	l.msgs = nil
	return m
}

// startRelayProxy is startProxy with a logger of the test's own, a route
// that retries once (5xx, reset), an HTTP/2 or HTTP/1.1 upstream, and an
// inbound listener (a sidecar's, reading the caller's peer metadata) or
// an outbound one.
func startRelayProxy(tb testing.TB, log *slog.Logger, upstream string, h2, inbound bool) (*Proxy, string) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	action := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "up"},
		RetryPolicy: &routev3.RetryPolicy{RetryOn: "5xx,reset", NumRetries: wrapperspb.UInt32(1), PerTryTimeout: durationpb.New(2 * time.Second)}}
	manager := &hcm.HttpConnectionManager{StatPrefix: "fuzz",
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{Name: "fuzz", VirtualHosts: []*routev3.VirtualHost{{
			Name: "up", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: action}}}}}}},
		HttpFilters: []*hcm.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(tb, &routerv3.Router{})}}}}
	up := staticCluster("up", upstream)
	if h2 {
		upstreamHTTP2(up)
	}
	front := &listener.Listener{Name: "front", Address: socket(addr), FilterChains: []*listener.FilterChain{{
		Filters: []*listener.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(tb, manager)}}}}}}
	if inbound {
		front.ListenerFilters = []*listener.ListenerFilter{{Name: "envoy.filters.listener.original_dst"}}
	}
	st := xdsclient.State{resource.ClusterType: {"up": mustAny(tb, up)}, resource.ListenerType: {"front": mustAny(tb, front)}}
	p := New(Options{Log: log, Self: telemetry.NewSelf("sidecar~127.0.0.1~fuzz-1.ns~ns.svc.cluster.local", "fuzz", "ns", "c1", "spiffe://cluster.local/ns/ns/sa/fuzz", map[string]string{"app": "fuzz"})})
	if _, err := p.Apply(st, resource.ListenerType); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = p.Drain(context.Background()) })
	return p, addr.String()
}

// relayUpstream answers by path: echo, a body beyond the windows,
// trailers, a 503 (retried), a reset (retried), a slow answer, else "ok".
var relayUpstream = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/echo":
		_, _ = io.Copy(w, r.Body)
	case "/big":
		_, _ = w.Write(bytes.Repeat([]byte("b"), 200<<10))
	case "/trailers":
		w.Header().Set("Trailer", "X-Sum")
		n, _ := io.Copy(w, r.Body)
		w.Header().Set("X-Sum", fmt.Sprint(n))
	case "/status":
		w.WriteHeader(http.StatusServiceUnavailable)
	case "/reset":
		panic(http.ErrAbortHandler)
	case "/slow":
		select {
		case <-time.After(20 * time.Millisecond):
		case <-r.Context().Done():
		}
	default:
		_, _ = io.WriteString(w, "ok")
	}
})

// relayIdle says what the proxy still holds once the client at address
// gone left and no other has a request under way: nothing, or what.
func relayIdle(p *Proxy, gone string) error {
	var left []string
	p.h2Conns.Range(func(k, _ any) bool {
		c := k.(*h2Conn)
		c.mu.Lock()
		if n := len(c.streams); n > 0 || c.conn.RemoteAddr().String() == gone {
			left = append(left, fmt.Sprintf("a client connection from %s with %d streams", c.conn.RemoteAddr(), n))
		}
		c.mu.Unlock()
		return true
	})
	p.h2Pools.Range(func(_, v any) bool {
		pl := v.(*h2Pool)
		pl.mu.Lock()
		conns := append([]*h2Conn(nil), pl.conns...)
		for _, c := range pl.conns {
			if c.active != 0 {
				left = append(left, fmt.Sprintf("an upstream connection counting %d streams", c.active))
			}
		}
		if len(pl.waiters) != 0 {
			left = append(left, fmt.Sprintf("%d streams waiting for an upstream connection", len(pl.waiters)))
		}
		pl.mu.Unlock()
		for _, c := range conns {
			c.mu.Lock()
			if len(c.streams) != 0 {
				left = append(left, fmt.Sprintf("an upstream connection with %d streams", len(c.streams)))
			}
			if c.owed != c.passed {
				left = append(left, fmt.Sprintf("an upstream connection owing %d bytes of window", c.owed-c.passed))
			}
			c.mu.Unlock()
		}
		return true
	})
	if len(left) > 0 {
		return errors.New(strings.Join(left, "; "))
	}
	return nil
}

// Program op-codes of FuzzH2Relay: each op is 4 bytes, op a b c.
const (
	opHeaders = iota
	opContinuation
	opData
	opRSTStream
	opWindowUpdate
	opSettings
	opPing
	opPriority
	opGoAway
	opRaw
	opPushPromise
	opFlush
	numOps
)

// What a HEADERS op chooses from: a path (relayUpstream's, and odd
// ones), a method, and one more header, fine, forbidden in HTTP/2 or
// malformed.
var (
	fuzzPaths = []string{"/", "/echo", "/big", "/trailers", "/status", "/reset", "/slow", "", "*", "/a?b=%zz", "//x/../y", "/echo?q",
		"/big?q", "/trailers?q", "/%2e%2e/echo", "/status?q"}
	fuzzMethods = []string{"GET", "POST", "HEAD", "CONNECT", "", "get", "PUT", "OPTIONS"}
	fuzzExtra   = [][2]string{{}, {"te", "trailers"}, {"te", "gzip"}, {"connection", "close"}, {"content-length", "3"},
		{"content-length", "x"}, {"Upper", "x"}, {"host", "other"}, {":status", "200"}, {":path", "/again"}, {"x-envoy-peer-metadata", "Cg8KBU5BTUVTEgYaBGZ1eno="},
		{"cookie", "a=1"}, {"content-type", "application/grpc"}, {"x-request-id", "fuzz"}, {":authority", "\xc3(.ns"}, {"bad\x00name", "v"}}
)

// Values of WINDOW_UPDATE and SETTINGS ops, valid and not.
var (
	fuzzWindows  = []uint32{0, 1, 1024, 65535, 1 << 20, 1 << 30, 1<<31 - 1}
	fuzzSettings = []uint32{0, 1, 100, 16383, 16384, 65535, 1 << 20, 1<<24 - 1, 1<<31 - 1, 1 << 31, 1<<32 - 1}
)

// h2Program plays one fuzz program to a relay and checks the relay's
// answers as a strict client would: frames it can parse, no larger than
// the client allowed, only on streams the client opened, within the
// windows the client granted, and a PING answered once all the program
// is read.
type h2Program struct {
	conn   net.Conn
	bw     *bufio.Writer
	wfr    *http2.Framer
	enc    *hpack.Encoder
	hbuf   bytes.Buffer
	blob   []byte
	nextID uint32

	mu sync.Mutex // the writer's and the reader's, guards the rest
	// opened: streams the client sent HEADERS on; started: those the
	// relay answered on; ended: those it finished (END_STREAM or
	// RST_STREAM); last: when it last sent a frame.
	opened, started, ended map[uint32]bool
	last                   time.Time
	// What the client let the relay send, as the most it ever allowed
	// (settings in flight may or may not apply yet): windows (initial:
	// SETTINGS_INITIAL_WINDOW_SIZE), frame size and HPACK table size.
	connAllow, initial int64
	streamAllow        map[uint32]int64
	initialChanged     bool
	maxFrame, maxTable uint32
	connUsed           int64
	streamUsed         map[uint32]int64
	synced             bool
	violations         []string
}

const endPing = "fuzz-end"

func (g *h2Program) violate(format string, args ...any) {
	g.mu.Lock()
	if len(g.violations) < 5 {
		g.violations = append(g.violations, fmt.Sprintf(format, args...))
	}
	g.mu.Unlock()
}

// settled tells whether the relay read the whole program and then
// finished every stream, or said nothing for a while.
func (g *h2Program) settled() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.synced {
		return false
	}
	for id := range g.opened {
		if !g.ended[id] {
			return time.Since(g.last) > 20*time.Millisecond
		}
	}
	return true
}

// overflowed checks, once the relay read the whole program, that it did
// not let the client grow a window it was sending on beyond 2^31-1: that
// is a FLOW_CONTROL_ERROR (RFC 9113, 6.9.1), for the connection or the
// stream. Only windows known exactly are checked: the connection's, and
// those of streams the relay answered on and did not end, while the
// initial window stayed at its default. Held: g.mu.
func (g *h2Program) overflowed() {
	const maxWindow = 1<<31 - 1
	if g.connAllow-g.connUsed > maxWindow {
		g.violations = append(g.violations, fmt.Sprintf("the relay carried on with a connection window of %d", g.connAllow-g.connUsed))
	}
	for id := range g.started {
		if w := 65535 + g.streamAllow[id] - g.streamUsed[id]; !g.ended[id] && !g.initialChanged && w > maxWindow {
			g.violations = append(g.violations, fmt.Sprintf("the relay carried on with a window of %d on stream %d", w, id))
		}
	}
}

// read reads the relay's frames until the connection ends.
func (g *h2Program) read(done chan<- struct{}) {
	defer close(done)
	fr := http2.NewFramer(nil, g.conn)
	fr.SetMaxReadFrameSize(1<<24 - 1)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	for {
		g.mu.Lock()
		fr.ReadMetaHeaders.SetAllowedMaxDynamicTableSize(g.maxTable)
		g.mu.Unlock()
		f, err := fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			switch {
			case errors.As(err, &se):
				g.violate("the relay sent a malformed header block on stream %d: %v", se.StreamID, se)
				continue
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ECONNRESET):
			default: // a frame the relay should not send, or no frame at all for 5 s
				g.violate("reading what the relay sent: %v", err)
			}
			return
		}
		id := f.Header().StreamID
		g.mu.Lock()
		g.last = time.Now()
		if f.Header().Length > g.maxFrame {
			g.violations = append(g.violations, fmt.Sprintf("the relay sent a frame of %d bytes, the client allows %d", f.Header().Length, g.maxFrame))
		}
		if f.Header().Flags.Has(http2.FlagDataEndStream) && (f.Header().Type == http2.FrameData || f.Header().Type == http2.FrameHeaders) {
			g.ended[id] = true
		}
		switch f := f.(type) {
		case *http2.PingFrame:
			if f.IsAck() && string(f.Data[:]) == endPing {
				g.synced = true
				g.overflowed()
			}
		case *http2.RSTStreamFrame:
			g.ended[id] = true
		case *http2.PushPromiseFrame:
			g.violations = append(g.violations, "the relay sent PUSH_PROMISE")
		case *http2.MetaHeadersFrame:
			g.started[id] = true
			if !g.opened[id] {
				g.violations = append(g.violations, fmt.Sprintf("the relay answered on stream %d, which the client never opened", id))
			}
		case *http2.DataFrame:
			if !g.opened[id] {
				g.violations = append(g.violations, fmt.Sprintf("the relay sent DATA on stream %d, which the client never opened", id))
			}
			n := int64(f.Header().Length)
			g.connUsed += n
			g.streamUsed[id] += n
			if g.connUsed > g.connAllow {
				g.violations = append(g.violations, fmt.Sprintf("the relay sent %d bytes on a connection window of %d", g.connUsed, g.connAllow))
			}
			if g.streamUsed[id] > g.initial+g.streamAllow[id] {
				g.violations = append(g.violations, fmt.Sprintf("the relay sent %d bytes on stream %d, window %d", g.streamUsed[id], id, g.initial+g.streamAllow[id]))
			}
		}
		g.mu.Unlock()
	}
}

// stream picks a stream ID: the few first ones, the connection, an even
// one, the largest, or a new one.
func (g *h2Program) stream(sel byte) uint32 {
	switch sel & 0x0f % 10 {
	case 5:
		return 0
	case 6:
		return 2
	case 7:
		return 1<<31 - 1
	case 8, 9:
		g.nextID += 2
		return g.nextID
	}
	return uint32(sel&0x0f%10)*2 + 1
}

// take is the next n bytes of the blob (fewer at its end).
func (g *h2Program) take(n int) []byte {
	n = min(n, len(g.blob))
	b := g.blob[:n]
	g.blob = g.blob[n:]
	return b
}

// block encodes a header block: a request's (path c&15, method c>>4&7)
// if request, and a header chosen by a>>4; or, with c's high bit, bytes
// of the blob. HPACK's dynamic table is the connection's, as a real
// client's is.
func (g *h2Program) block(a, c byte, request bool) []byte {
	if c&0x80 != 0 {
		return g.take(int(a>>4) * 4)
	}
	g.hbuf.Reset()
	e := fuzzExtra[int(a>>4)]
	if request {
		authority := "h"
		if e[0] == ":authority" {
			authority, e[0] = e[1], "" // in place of h
		}
		if m := fuzzMethods[int(c>>4&7)]; m != "" {
			_ = g.enc.WriteField(hpack.HeaderField{Name: ":method", Value: m})
		}
		_ = g.enc.WriteField(hpack.HeaderField{Name: ":scheme", Value: "http"})
		_ = g.enc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
		if p := fuzzPaths[int(c&15)]; p != "" {
			_ = g.enc.WriteField(hpack.HeaderField{Name: ":path", Value: p})
		}
	}
	if e[0] != "" {
		_ = g.enc.WriteField(hpack.HeaderField{Name: e[0], Value: e[1]})
	}
	return g.hbuf.Bytes()
}

// run writes the program's frames; it stops at the first failed write
// (the relay may close the connection on a connection error).
func (g *h2Program) run(prog []byte) error {
	for i := 0; i+4 <= len(prog) && i < 4*64; i += 4 {
		op, a, b, c := prog[i]%numOps, prog[i+1], prog[i+2], prog[i+3]
		var err error
		switch op {
		case opHeaders:
			id := g.stream(a)
			g.mu.Lock()
			request := !g.opened[id] // else trailers
			g.opened[id] = true
			g.mu.Unlock()
			frag := g.block(a, c, request)
			p := http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: b&1 != 0, EndHeaders: b&2 == 0}
			if b&4 != 0 {
				p.Priority = http2.PriorityParam{StreamDep: g.stream(c), Exclusive: c&1 != 0, Weight: c}
			}
			if b&8 != 0 {
				p.PadLength = c
			}
			err = g.wfr.WriteHeaders(p)
		case opContinuation:
			frag := g.block(a, c, false)
			err = g.wfr.WriteContinuation(g.stream(a), b&1 != 0, frag)
		case opData:
			n := int(c) * 64
			if b&4 != 0 {
				n = 16384 + int(c)%2 // the largest frame, and one beyond
			}
			data := bytes.Repeat([]byte{'d'}, n)
			if b&2 != 0 {
				err = g.wfr.WriteDataPadded(g.stream(a), b&1 != 0, data, make([]byte, int(b>>3)))
			} else {
				err = g.wfr.WriteData(g.stream(a), b&1 != 0, data)
			}
		case opRSTStream:
			err = g.wfr.WriteRSTStream(g.stream(a), http2.ErrCode(b%15))
		case opWindowUpdate:
			id := g.stream(a)
			inc := fuzzWindows[int(b)%len(fuzzWindows)]
			if b&0x80 != 0 {
				inc = uint32(c) << 8
			}
			g.mu.Lock()
			if id == 0 {
				g.connAllow += int64(inc)
			} else {
				g.streamAllow[id] += int64(inc)
			}
			g.mu.Unlock()
			err = g.wfr.WriteWindowUpdate(id, inc)
		case opSettings:
			if b&0x80 != 0 {
				err = g.wfr.WriteSettingsAck()
				break
			}
			s := http2.Setting{ID: http2.SettingID(b%8 + 1), Val: fuzzSettings[int(c)%len(fuzzSettings)]}
			g.mu.Lock()
			switch s.ID {
			case http2.SettingInitialWindowSize:
				g.initial = max(g.initial, int64(s.Val))
				g.initialChanged = true
			case http2.SettingMaxFrameSize:
				g.maxFrame = max(g.maxFrame, s.Val)
			case http2.SettingHeaderTableSize:
				g.maxTable = max(g.maxTable, s.Val)
			}
			g.mu.Unlock()
			err = g.wfr.WriteSettings(s)
		case opPing:
			err = g.wfr.WritePing(b&1 != 0, [8]byte{'p', 'r', 'o', 'g', a, b, c})
		case opPriority:
			err = g.wfr.WritePriority(g.stream(a), http2.PriorityParam{StreamDep: g.stream(b), Exclusive: c&1 != 0, Weight: c})
		case opGoAway:
			err = g.wfr.WriteGoAway(g.stream(a), http2.ErrCode(b%15), g.take(int(c)%16))
		case opRaw:
			id, typ := g.stream(c), http2.FrameType(a%12) // the types there are, or above 0xc0 others
			if a >= 0xc0 {
				typ = http2.FrameType(a)
			}
			if typ == http2.FrameHeaders {
				g.mu.Lock()
				g.opened[id] = true
				g.mu.Unlock()
			}
			err = g.wfr.WriteRawFrame(typ, http2.Flags(b), id, g.take(int(c)%64))
		case opPushPromise:
			err = g.wfr.WritePushPromise(http2.PushPromiseParam{StreamID: g.stream(a), PromiseID: g.stream(b), BlockFragment: g.block(a, c, true), EndHeaders: true})
		case opFlush:
			err = g.bw.Flush()
		}
		if err != nil {
			return err
		}
	}
	if err := g.wfr.WritePing(false, [8]byte([]byte(endPing))); err != nil {
		return err
	}
	return g.bw.Flush()
}

// play writes the client preface and prog to conn, reads what comes back
// until the relay finished with the program (or closed), and closes conn.
func play(conn net.Conn, prog, blob []byte) (synced bool, violations []string, werr error) {
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	bw := bufio.NewWriter(conn)
	g := &h2Program{conn: conn, bw: bw, wfr: http2.NewFramer(bw, nil), blob: blob, nextID: 9,
		opened: map[uint32]bool{}, started: map[uint32]bool{}, ended: map[uint32]bool{},
		connAllow: 65535, initial: 65535, streamAllow: map[uint32]int64{}, streamUsed: map[uint32]int64{}, maxFrame: 16384, maxTable: 4096}
	g.wfr.AllowIllegalWrites = true
	g.enc = hpack.NewEncoder(&g.hbuf)
	done := make(chan struct{})
	go g.read(done)
	_, _ = bw.WriteString(http2.ClientPreface)
	werr = g.wfr.WriteSettings()
	if werr == nil {
		werr = g.run(prog)
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-done:
			break wait
		case <-tick.C:
			if g.settled() {
				break wait
			}
		}
	}
	conn.Close()
	<-done
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.synced, g.violations, werr
}

// FuzzH2Relay plays a client's frames to the HTTP/2 relay (HTTP/2
// upstream) and to the streams it hands to net/http's handler (HTTP/1.1
// upstream), on an outbound or an inbound listener (mode): prog is a
// program of up to 64 4-byte ops (HEADERS with a chosen request or
// trailers, CONTINUATION, DATA, RST_STREAM, WINDOW_UPDATE, SETTINGS, PING,
// PRIORITY, GOAWAY, PUSH_PROMISE, raw frames; blob feeds raw payloads).
// Whatever a client sends costs at most its own connection: the proxy
// does not panic, answers only as a strict client accepts, reads the whole
// program (a PING after it is answered), lets go of every stream, upstream
// slot and window credit once the client is gone, and serves the next
// client.
func FuzzH2Relay(f *testing.F) {
	op := func(ops ...byte) []byte { return ops }
	// hdr is HEADERS on stream id (0: 1, 1: 3, ...) with a request:
	// path and method index fuzzPaths and fuzzMethods, extra fuzzExtra.
	hdr := func(id, flags, path, method, extra byte) []byte {
		return op(opHeaders, id|extra<<4, flags, path|method<<4)
	}
	const end, open = 1, 0
	const toHTTP1, inbound = 1, 2 // mode bits: the upstream speaks HTTP/1.1; the listener is a sidecar's inbound one
	for _, s := range []struct {
		mode       byte
		prog, blob []byte
	}{
		{0, hdr(0, end, 0, 0, 0), nil},                                                                                    // GET /
		{toHTTP1, hdr(0, end, 0, 0, 0), nil},                                                                              // the same, by the handler
		{0, slices.Concat(hdr(0, open, 1, 1, 0), op(opData, 0, 0, 4)), nil},                                               // POST /echo, body left open
		{toHTTP1, slices.Concat(hdr(0, open, 1, 1, 4), op(opData, 0, end, 16)), nil},                                      // POST /echo, Content-Length 3 and 1 KiB
		{0, slices.Concat(hdr(0, open, 3, 1, 0), op(opData, 0, 0, 8), op(opHeaders, 0xd0, end, 0)), nil},                  // trailers (x-request-id)
		{toHTTP1, slices.Concat(hdr(0, open, 3, 1, 1), op(opData, 0, 0, 8), op(opHeaders, 0xd0, end, 0)), nil},            // trailers (x-request-id)
		{0, slices.Concat(hdr(0, end, 2, 0, 0), op(opWindowUpdate, 0, 0x80, 255), op(opWindowUpdate, 1, 0x80, 255)), nil}, // /big, then window
		{0, slices.Concat(op(opSettings, 0, 3, 3), hdr(0, end, 2, 0, 0)), nil},                                            // initial window 16383, then /big
		{0, slices.Concat(hdr(0, end, 2, 0, 0), op(opSettings, 0, 3, 6)), nil},                                            // /big, then initial window 1 MiB
		{0, slices.Concat(hdr(0, end|2, 0, 0, 0), op(opContinuation, 0x10, 1, 0)), nil},                                   // HEADERS, CONTINUATION with te: trailers
		{0, slices.Concat(hdr(0, open, 6, 0, 0), op(opRSTStream, 0, 8, 0)), nil},                                          // /slow, reset
		{toHTTP1, slices.Concat(hdr(0, open, 6, 0, 0), op(opRSTStream, 0, 8, 0)), nil},
		{0, slices.Concat(hdr(0, end, 4, 0, 0), hdr(1, end, 5, 0, 0)), nil}, // a 503 and a reset, each retried
		{toHTTP1, slices.Concat(hdr(0, end, 4, 0, 0), hdr(1, end, 5, 0, 0)), nil},
		{0, slices.Concat(hdr(0, end, 7, 0, 0), hdr(1, end, 8, 3, 0), hdr(2, end, 9, 4, 0)), nil}, // no :path, CONNECT *, no :method
		{toHTTP1, slices.Concat(hdr(0, end, 9, 0, 0), hdr(1, end, 10, 5, 0)), nil},                // a malformed :path, a lowercase method
		{0, slices.Concat(hdr(1, end, 0, 0, 0), hdr(0, end, 0, 0, 0)), nil},                       // stream 1 after 3
		{0, slices.Concat(op(opSettings, 0, 4, 4), hdr(0, end, 2, 0, 0)), nil},                    // max frame size 16384
		{0, op(opHeaders, 0x20, end, 0x80), []byte("\x82\x86\x84\x41\x01h\xff\xff")},              // broken HPACK
		{0, slices.Concat(op(opPing, 0, 0, 0), op(opPriority, 0, 0, 0)), nil},                     // a stream its own parent
		{0, slices.Concat(hdr(0, open, 1, 1, 0), op(opGoAway, 0, 0, 0), op(opData, 0, end, 1)), nil},
		{0, slices.Concat(hdr(6, end, 0, 0, 0), op(opData, 5, 0, 1), op(opWindowUpdate, 5, 0, 0)), nil}, // an even stream, stream 0
		{0, op(opRaw, 0xc2, 0, 0x40), []byte("an extension frame")},
		{0, op(opPushPromise, 0, 1, 0), nil},
		{0, slices.Concat(hdr(0, open, 1, 1, 0), op(opData, 0, 5, 0)), nil},         // DATA beyond the frame size
		{0, slices.Concat(hdr(0, open, 1, 1, 0), op(opData, 0, 2|1<<3, 2)), nil},    // padded DATA
		{toHTTP1, slices.Concat(hdr(0, end, 0, 0, 7), hdr(1, end, 0, 0, 15)), nil},  // a header name with uppercase, with NUL
		{inbound, slices.Concat(hdr(0, end, 0, 0, 10), hdr(1, end, 1, 0, 10)), nil}, // peer metadata
		{inbound | toHTTP1, slices.Concat(hdr(0, end, 0, 0, 10), hdr(1, end, 2, 0, 13)), nil},
	} {
		f.Add(s.mode, s.prog, s.blob)
	}

	h2Up := h2cServer(f, relayUpstream)
	h1Up := httptest.NewServer(relayUpstream)
	f.Cleanup(h1Up.Close)
	log := &errorLog{}
	var proxies [4]*Proxy
	var fronts [4]string
	for mode := range 4 {
		up := h2Up
		if mode&toHTTP1 != 0 {
			up = h1Up.Listener.Addr().String()
		}
		proxies[mode], fronts[mode] = startRelayProxy(f, slog.New(log), up, mode&toHTTP1 == 0, mode&inbound != 0)
	}
	client := h2cClient()
	client.Timeout = 5 * time.Second
	check := func(front string) error {
		resp, err := client.Post("http://"+front+"/echo", "text/plain", strings.NewReader("still there"))
		if err != nil {
			return err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != "still there" {
			return fmt.Errorf("%d %q %v", resp.StatusCode, b, err)
		}
		return nil
	}
	for _, front := range fronts {
		if err := check(front); err != nil {
			f.Fatalf("before fuzzing: %v", err)
		}
	}
	base := goruntime.NumGoroutine()

	f.Fuzz(func(t *testing.T, mode byte, prog, blob []byte) {
		p, front := proxies[mode%4], fronts[mode%4]
		conn, err := net.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		synced, violations, werr := play(conn, prog, blob)
		if msgs := log.take(); len(msgs) > 0 {
			t.Fatalf("program %x (blob %q): %s", prog, blob, strings.Join(msgs, "\n"))
		}
		if len(violations) > 0 {
			t.Fatalf("program %x (blob %q): %s", prog, blob, strings.Join(violations, "; "))
		}
		if errors.Is(werr, os.ErrDeadlineExceeded) {
			t.Fatalf("program %x (blob %q): the relay stopped reading the program (synced %v)", prog, blob, synced)
		}

		var idleErr error
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
			if idleErr = relayIdle(p, conn.LocalAddr().String()); idleErr == nil {
				break
			}
		}
		if idleErr != nil {
			t.Fatalf("program %x (blob %q): the client is gone, the relay still holds %v", prog, blob, idleErr)
		}
		if err := check(front); err != nil {
			t.Fatalf("program %x (blob %q): the next client is not served: %v", prog, blob, err)
		}
		for end := time.Now().Add(5 * time.Second); goruntime.NumGoroutine() > base+100; time.Sleep(time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("program %x (blob %q): %d goroutines, %d before fuzzing", prog, blob, goruntime.NumGoroutine(), base)
			}
		}
	})
}
