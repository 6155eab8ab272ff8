package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
)

// HTTP/2 is relayed frame by frame (h2serve.go for the downstream side,
// this file for the connections of both sides and the upstream pool).
// Each connection has one reader goroutine; a frame it reads is passed to
// the paired stream on the other side's connection, written under that
// connection's lock into its buffer, and flushed once the reader has
// nothing more buffered to read. There is no goroutine per stream and no
// hand-off between goroutines on the way: net/http's server and Transport
// spend a handler goroutine per stream, a writer goroutine per connection
// and a header map per message, which in the gRPC profiles cost more than
// the bytes.
//
// Flow control is end to end: what one side may send is bounded by our
// window, and credit (WINDOW_UPDATE) goes back to the sender only once its
// data is written onward, so a slow receiver slows its sender instead of
// filling the proxy's memory.

const (
	// h2StreamWindow and h2ConnWindow are what a peer may send us ahead,
	// per stream and per connection.
	h2StreamWindow = 256 << 10
	h2ConnWindow   = 1 << 20
	// h2MaxStreams bounds the concurrent streams a downstream may open
	// (net/http: 250, Envoy: unbounded).
	h2MaxStreams = 1000
	// h2MaxHeaderList bounds a header block (Envoy's default is 60 KiB).
	h2MaxHeaderList = 64 << 10
	// h2AssumedStreams is an upstream's stream limit until it says.
	h2AssumedStreams = 100
)

// h2WriteTimeout bounds a write to a peer that stopped reading (gone
// without a word, or stuck): readers write to the other side's
// connections, so such a peer would stall the streams of everyone sharing
// the reader. It ends that peer's connection instead. (Atomic: a test
// shortens it while connections of earlier tests still run.)
var h2WriteTimeout = func() *atomic.Int64 {
	var d atomic.Int64
	d.Store(int64(10 * time.Second))
	return &d
}()

// h2Conn is one HTTP/2 connection, either side.
type h2Conn struct {
	p      *Proxy
	conn   net.Conn
	br     *bufio.Reader
	fr     *http2.Framer
	client bool // an upstream connection: we open its streams
	// d is a downstream connection's; deadlineSet when its idle deadline
	// was last pushed back (by its reader).
	d           *downstream
	deadlineSet time.Time

	mu     sync.Mutex // guards writing and everything below
	bw     *bufio.Writer
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	werr   error
	// wdeadline is when the write deadline was last pushed back.
	wdeadline time.Time
	streams   map[uint32]*h2Stream
	nextID    uint32 // client: the next stream ID
	lastID    uint32 // server: the highest stream ID the peer opened
	// sendWin is the connection window the peer grants us; initWin and
	// maxFrame are the peer's settings for new streams and frames.
	sendWin  int32
	initWin  int32
	maxFrame uint32
	// blocked are streams with data waiting for the connection window.
	blocked []*h2Stream
	// owed is what the peer sent on the connection and has not had back
	// as WINDOW_UPDATE; passed the part of it written onward (or dropped).
	owed, passed int32
	// goaway: no new streams (either side said GOAWAY, or we drain);
	// guarded by mu downstream and by pool.mu upstream.
	goaway bool
	// Downstream, read by its reader only: the streams the client opened
	// and those it reset within a second (the rapid reset's mark).
	opened, premature int
	// handlers are the streams' handler goroutines still running, reset
	// or not: new streams are refused while they fill the stream limit.
	handlers atomic.Int32

	// Upstream connections only, guarded by pool.mu.
	pool       *h2Pool
	active     int
	maxStreams uint32
	dead       bool
	// idleSince is when active last fell to 0.
	idleSince time.Time
}

func newH2Conn(p *Proxy, conn net.Conn, br *bufio.Reader, client bool) *h2Conn {
	c := &h2Conn{p: p, conn: conn, br: br, bw: bufio.NewWriterSize(conn, 16<<10), client: client,
		streams: map[uint32]*h2Stream{}, nextID: 1, sendWin: 65535, initWin: 65535, maxFrame: 16384, maxStreams: h2AssumedStreams}
	c.fr = http2.NewFramer(c.bw, br)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = h2MaxHeaderList
	c.enc = hpack.NewEncoder(&c.encBuf)
	return c
}

// start writes our side's opening: the client preface (upstream), our
// settings and the connection window.
func (c *h2Conn) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	settings := []http2.Setting{{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow}, {ID: http2.SettingMaxHeaderListSize, Val: h2MaxHeaderList}}
	if c.client {
		_, _ = c.bw.WriteString(http2.ClientPreface)
		settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	} else {
		settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: h2MaxStreams})
	}
	_ = c.fr.WriteSettings(settings...)
	_ = c.fr.WriteWindowUpdate(0, h2ConnWindow-65535)
	return c.bw.Flush()
}

// write runs fn (which writes frames) under the connection's lock; a
// failed write closes the connection, whose reader then cleans up.
func (c *h2Conn) write(fl *h2Flush, fn func() error) {
	c.mu.Lock()
	c.writeLocked(fl, fn)
	c.mu.Unlock()
}

func (c *h2Conn) writeLocked(fl *h2Flush, fn func() error) {
	if c.werr != nil {
		return
	}
	c.armWrite()
	if err := fn(); err != nil {
		c.werr = err
		c.conn.Close()
		return
	}
	fl.add(c)
}

// writeHeaders encodes and writes a header block (with CONTINUATION
// frames beyond the peer's frame size). Held: c.mu.
func (c *h2Conn) writeHeaders(id uint32, end bool, fields []hpack.HeaderField) error {
	c.encBuf.Reset()
	for _, f := range fields {
		if err := c.enc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.encBuf.Bytes()
	first := block
	if uint32(len(first)) > c.maxFrame {
		first = block[:c.maxFrame]
	}
	block = block[len(first):]
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0}); err != nil {
		return err
	}
	for len(block) > 0 {
		frag := block
		if uint32(len(frag)) > c.maxFrame {
			frag = block[:c.maxFrame]
		}
		block = block[len(frag):]
		if err := c.fr.WriteContinuation(id, len(block) == 0, frag); err != nil {
			return err
		}
	}
	return nil
}

// headers writes a header block on a stream.
func (c *h2Conn) headers(fl *h2Flush, id uint32, end bool, fields []hpack.HeaderField) {
	c.write(fl, func() error { return c.writeHeaders(id, end, fields) })
}

// armWrite keeps the write deadline 90-100% of h2WriteTimeout ahead
// before a write (the buffer may flush on any): pushing it back now and
// then costs less than a deadline per write. Held: c.mu.
func (c *h2Conn) armWrite() {
	timeout := time.Duration(h2WriteTimeout.Load())
	if now := time.Now(); now.Sub(c.wdeadline) > timeout/10 {
		c.wdeadline = now
		_ = c.conn.SetWriteDeadline(now.Add(timeout))
	}
}

// reset writes RST_STREAM.
func (c *h2Conn) reset(fl *h2Flush, id uint32, code http2.ErrCode) {
	c.write(fl, func() error { return c.fr.WriteRSTStream(id, code) })
}

// dropped credits back at once, at the connection level, received data
// nobody relays (its stream is gone or gave up).
func (c *h2Conn) dropped(fl *h2Flush, n int32) {
	c.mu.Lock()
	c.creditLocked(fl, n)
	c.mu.Unlock()
}

// creditLocked returns n bytes of connection window once enough is owed
// to be worth a frame. Held: c.mu.
func (c *h2Conn) creditLocked(fl *h2Flush, n int32) {
	c.passed += n
	if c.passed >= h2ConnWindow/4 {
		k := c.passed
		c.passed, c.owed = 0, c.owed-k
		c.writeLocked(fl, func() error { return c.fr.WriteWindowUpdate(0, uint32(k)) })
	}
}

// settings applies the peer's SETTINGS and acknowledges them. Streams
// whose send window grew get their waiting data sent.
func (c *h2Conn) settings(fl *h2Flush, f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	var delta int32
	grew := false
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			c.mu.Lock()
			delta = int32(s.Val) - c.initWin
			c.initWin = int32(s.Val)
			c.mu.Unlock()
			grew = delta != 0
		case http2.SettingMaxFrameSize:
			c.mu.Lock()
			c.maxFrame = s.Val
			c.mu.Unlock()
		case http2.SettingHeaderTableSize:
			c.mu.Lock()
			c.enc.SetMaxDynamicTableSizeLimit(s.Val)
			c.mu.Unlock()
		case http2.SettingMaxConcurrentStreams:
			if c.pool == nil { // still dialing: nobody else has it
				c.maxStreams = s.Val
				break
			}
			c.pool.mu.Lock()
			c.maxStreams = s.Val
			c.pool.mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.write(fl, c.fr.WriteSettingsAck)
	if grew {
		c.mu.Lock()
		streams := make([]*h2Stream, 0, len(c.streams))
		for _, s := range c.streams {
			streams = append(streams, s)
		}
		c.mu.Unlock()
		overflow := false
		for _, s := range streams {
			s.mu.Lock()
			if h := s.half(c); h != nil {
				if int64(h.win)+int64(delta) > maxWindow {
					overflow = true // a stream window past 2^31-1
				} else {
					h.win += delta
					s.drain(fl, h)
				}
			}
			s.mu.Unlock()
		}
		if overflow {
			return c.fail(fl, http2.ErrCodeFlowControl)
		}
	}
	return nil
}

// maxWindow is the largest flow-control window (RFC 9113 6.9.1).
const maxWindow = 1<<31 - 1

// windowUpdate adds to a send window and sends what waited for it. A
// window pushed past 2^31-1 is a flow-control error (of the connection,
// or of the stream), not a wrap to negative that would stall it for good.
func (c *h2Conn) windowUpdate(fl *h2Flush, f *http2.WindowUpdateFrame) error {
	if f.StreamID == 0 {
		c.mu.Lock()
		if int64(c.sendWin)+int64(f.Increment) > maxWindow {
			c.mu.Unlock()
			return c.fail(fl, http2.ErrCodeFlowControl)
		}
		c.sendWin += int32(f.Increment)
		blocked := c.blocked
		c.blocked = nil
		c.mu.Unlock()
		for _, s := range blocked {
			s.mu.Lock()
			if h := s.half(c); h != nil {
				s.drain(fl, h)
			}
			s.mu.Unlock()
		}
		return nil
	}
	s := c.stream(f.StreamID)
	if s == nil {
		return nil
	}
	s.mu.Lock()
	h := s.half(c)
	if h != nil && int64(h.win)+int64(f.Increment) > maxWindow {
		s.peerReset(fl, c, http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeFlowControl})
		s.mu.Unlock()
		c.reset(fl, f.StreamID, http2.ErrCodeFlowControl)
		return nil
	}
	if h != nil {
		h.win += int32(f.Increment)
		s.drain(fl, h)
	}
	s.mu.Unlock()
	return nil
}

// fail ends the connection with GOAWAY code (a connection error).
func (c *h2Conn) fail(fl *h2Flush, code http2.ErrCode) error {
	c.write(fl, func() error { return c.fr.WriteGoAway(c.lastID, code, nil) })
	fl.flush()
	return http2.ConnectionError(code)
}

// data counts a DATA frame against the connection window and gives it
// to its stream (under the stream's lock), or credits it back at once
// when the stream is gone (answered or reset).
func (c *h2Conn) data(fl *h2Flush, f *http2.DataFrame, relay func(*h2Stream, int32)) error {
	n := int32(f.Header().Length)
	if err := c.received(n); err != nil {
		return err
	}
	s := c.stream(f.StreamID)
	if s == nil {
		c.dropped(fl, n)
		return nil
	}
	s.mu.Lock()
	relay(s, n)
	s.mu.Unlock()
	return nil
}

func (c *h2Conn) stream(id uint32) *h2Stream {
	c.mu.Lock()
	s := c.streams[id]
	c.mu.Unlock()
	return s
}

// h2Flush collects the connections a goroutine wrote to, to flush them
// once it would wait: several frames, one system call.
type h2Flush struct{ conns []*h2Conn }

func (f *h2Flush) add(c *h2Conn) {
	for _, x := range f.conns {
		if x == c {
			return
		}
	}
	f.conns = append(f.conns, c)
}

func (f *h2Flush) flush() {
	for _, c := range f.conns {
		c.mu.Lock()
		if c.werr == nil && c.bw.Buffered() > 0 {
			c.armWrite()
			if err := c.bw.Flush(); err != nil {
				c.werr = err
				c.conn.Close()
			}
		}
		c.mu.Unlock()
	}
	f.conns = f.conns[:0]
}

// h2Pool is the HTTP/2 connections to one upstream address.
type h2Pool struct {
	mu      sync.Mutex
	conns   []*h2Conn
	dialing int
	waiters []*h2Stream
	// retired: the configuration no longer reaches the pool (pools.go).
	retired bool
	// last is when a stream last took or gave back a connection's slot.
	last time.Time
}

// h2PoolFor is the pool of an endpoint.
func (p *Proxy) h2PoolFor(cl *config.Cluster, ep *config.Endpoint, addr string) *h2Pool {
	key := upstreamKey{pool: poolKeyFor(cl, ep), addr: addr}
	v, ok := p.h2Pools.Load(key)
	if !ok {
		var loaded bool
		if v, loaded = p.h2Pools.LoadOrStore(key, &h2Pool{last: time.Now()}); !loaded {
			p.pooled()
		}
	}
	return v.(*h2Pool)
}

// acquire gives a connection with room for one more stream, or nil when
// s waits for a dial (started here if none is under way for it), after
// which the dialer attaches it. Held: s.mu.
func (pl *h2Pool) acquire(p *Proxy, s *h2Stream, cl *config.Cluster, ep *config.Endpoint, addr string) *h2Conn {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.last = time.Now()
	for _, c := range pl.conns {
		if !c.dead && !c.goaway && uint32(c.active) < c.maxStreams {
			c.active++
			return c
		}
	}
	pl.waiters = append(pl.waiters, s)
	if pl.dialing*h2AssumedStreams < len(pl.waiters) {
		pl.dialing++
		go pl.dial(p, cl, ep, addr)
	}
	return nil
}

// dial opens an upstream connection and attaches the waiting streams
// it has room for.
func (pl *h2Pool) dial(p *Proxy, cl *config.Cluster, ep *config.Endpoint, addr string) {
	var fl h2Flush
	defer fl.flush()
	c, err := p.dialH2(cl, ep, addr)
	pl.mu.Lock()
	pl.dialing--
	var take []*h2Stream
	var unused bool
	if err == nil {
		c.pool = pl
		c.idleSince = time.Now()
		pl.conns = append(pl.conns, c)
		n := min(len(pl.waiters), int(c.maxStreams))
		take = append(take, pl.waiters[:n]...)
		pl.waiters = append(pl.waiters[:0], pl.waiters[n:]...)
		c.active += n
		// Retired while it dialed: it serves who waited, then closes.
		c.goaway = pl.retired
		unused = pl.retired && n == 0
		if len(pl.waiters) > 0 && pl.dialing == 0 {
			pl.dialing++
			go pl.dial(p, cl, ep, addr)
		}
	} else if pl.dialing == 0 {
		take, pl.waiters = pl.waiters, nil
	}
	pl.mu.Unlock()
	if err == nil {
		go c.readUpstream()
		if unused {
			c.conn.Close()
		}
	}
	for _, s := range take {
		s.mu.Lock()
		switch {
		case err != nil:
			s.dialFailed(&fl, pl, err)
		case s.done || s.pool != pl:
			pl.done(c) // it moved on (reset, timed out) while we dialed
		default:
			s.attach(&fl, c)
		}
		s.mu.Unlock()
	}
}

// forget takes a waiting stream out (it was reset or timed out).
func (pl *h2Pool) forget(s *h2Stream) {
	pl.mu.Lock()
	for i, w := range pl.waiters {
		if w == s {
			pl.waiters = append(pl.waiters[:i], pl.waiters[i+1:]...)
			break
		}
	}
	pl.mu.Unlock()
}

// done gives a stream's slot back; a connection told to go away closes
// with its last stream.
func (pl *h2Pool) done(c *h2Conn) {
	pl.mu.Lock()
	c.active--
	closeIt := c.goaway && c.active == 0
	if c.active == 0 {
		c.idleSince = time.Now()
		pl.last = c.idleSince
	}
	pl.mu.Unlock()
	if closeIt {
		c.conn.Close()
	}
}

// remove takes a connection out of its pool.
func (pl *h2Pool) remove(c *h2Conn) {
	pl.mu.Lock()
	c.dead = true
	for i, x := range pl.conns {
		if x == c {
			pl.conns = append(pl.conns[:i], pl.conns[i+1:]...)
			break
		}
	}
	pl.mu.Unlock()
}

// dialH2 opens an HTTP/2 connection to an upstream (prior knowledge, or
// istio-h2 inside the mesh's mTLS) and reads its settings.
func (p *Proxy) dialH2(cl *config.Cluster, ep *config.Endpoint, addr string) (*h2Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), max(cl.ConnectTimeout, time.Second))
	defer cancel()
	conn, err := p.dialFor(ctx, cl, ep, addr, []string{"istio-h2"})
	if err != nil {
		return nil, err
	}
	c := newH2Conn(p, conn, bufio.NewReaderSize(conn, 16<<10), true)
	if err := c.start(); err != nil {
		conn.Close()
		return nil, err
	}
	// The server's first frame is its SETTINGS: read it before streams
	// start, so they follow its limits from the first one.
	_ = conn.SetReadDeadline(time.Now().Add(max(cl.ConnectTimeout, time.Second)))
	f, err := c.fr.ReadFrame()
	_ = conn.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("upstream HTTP/2 settings: %w", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("upstream began HTTP/2 with %s, not SETTINGS", f.Header().Type)
	}
	var fl h2Flush
	if err := c.settings(&fl, sf); err != nil {
		conn.Close()
		return nil, err
	}
	fl.flush()
	return c, nil
}

// readUpstream is an upstream connection's reader: responses go to
// their downstream streams.
func (c *h2Conn) readUpstream() {
	var fl h2Flush
	err := func() (err error) {
		defer func() {
			// A bug here must cost one upstream connection, not the proxy.
			if v := recover(); v != nil {
				c.p.opts.Log.Error("HTTP/2 upstream reader panicked; connection closed", "panic", v, "stack", string(debug.Stack()))
				err = fmt.Errorf("panic: %v", v)
			}
		}()
		return c.readLoop(&fl, c.upstreamFrame)
	}()
	c.pool.remove(c)
	c.conn.Close()
	c.mu.Lock()
	streams := c.streams
	c.streams = map[uint32]*h2Stream{}
	c.mu.Unlock()
	if errors.Is(err, io.EOF) {
		err = errors.New("upstream connection closed")
	}
	for _, s := range streams {
		s.mu.Lock()
		if s.up.c == c {
			s.upstreamLost(&fl, fmt.Errorf("upstream connection: %w", err))
		}
		s.mu.Unlock()
	}
	fl.flush()
}

// readLoop reads frames until the connection fails, flushing what the
// frames caused before it would wait for the next.
func (c *h2Conn) readLoop(fl *h2Flush, frame func(*h2Flush, http2.Frame) error) error {
	for {
		if c.br.Buffered() == 0 {
			fl.flush()
		}
		if c.d != nil {
			// Downstream, a frame must arrive whole within the header
			// timeout once it has begun (the idle timeout waits for it
			// to begin); frames that arrive whole need no deadline.
			if _, err := c.br.Peek(1); err != nil {
				return err
			}
			if !frameBuffered(c.br) {
				if err := c.conn.SetReadDeadline(time.Now().Add(c.p.opts.Limits.HeaderTimeout)); err != nil {
					return err
				}
				c.deadlineSet = time.Time{} // the idle deadline is set again with the frame
			}
		}
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if s := c.stream(se.StreamID); s != nil {
					s.mu.Lock()
					s.peerReset(fl, c, se)
					s.mu.Unlock()
				}
				c.reset(fl, se.StreamID, se.Code)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.write(fl, func() error { return c.fr.WriteGoAway(c.lastID, http2.ErrCode(ce), nil) })
				fl.flush()
			}
			return err
		}
		if err := frame(fl, f); err != nil {
			return err
		}
	}
}

// frameBuffered tells whether the reader holds a whole frame.
func frameBuffered(br *bufio.Reader) bool {
	n := br.Buffered()
	if n < 9 {
		return false
	}
	h, _ := br.Peek(9)
	return n >= 9+int(h[0])<<16|int(h[1])<<8|int(h[2])
}

// common handles the frames both sides treat alike; it reports whether
// f was one of them.
func (c *h2Conn) common(fl *h2Flush, f http2.Frame) (bool, error) {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		return true, c.settings(fl, f)
	case *http2.WindowUpdateFrame:
		return true, c.windowUpdate(fl, f)
	case *http2.PingFrame:
		if !f.IsAck() {
			c.write(fl, func() error { return c.fr.WritePing(true, f.Data) })
		}
	case *http2.PriorityFrame:
	default:
		return false, nil
	}
	return true, nil
}

// upstreamFrame handles one frame from an upstream.
func (c *h2Conn) upstreamFrame(fl *h2Flush, f http2.Frame) error {
	if ok, err := c.common(fl, f); ok {
		return err
	}
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		s := c.stream(f.StreamID)
		if s == nil {
			c.reset(fl, f.StreamID, http2.ErrCodeStreamClosed)
			return nil
		}
		s.mu.Lock()
		if s.up.c == c && s.up.id == f.StreamID {
			s.upstreamHeaders(fl, f)
		}
		s.mu.Unlock()
	case *http2.DataFrame:
		return c.data(fl, f, func(s *h2Stream, n int32) {
			if s.up.c == c && s.up.id == f.StreamID {
				s.relayData(fl, f, n)
			} else {
				c.dropped(fl, n) // an attempt given up
			}
		})
	case *http2.RSTStreamFrame:
		if s := c.stream(f.StreamID); s != nil {
			s.mu.Lock()
			s.peerReset(fl, c, http2.StreamError{StreamID: f.StreamID, Code: f.ErrCode})
			s.mu.Unlock()
		}
	case *http2.GoAwayFrame:
		c.pool.mu.Lock()
		c.goaway = true
		idle := c.active == 0
		c.pool.mu.Unlock()
		if idle {
			c.conn.Close()
			return nil
		}
		// Streams the upstream never saw fail as refused: safe to retry.
		c.mu.Lock()
		var refused []*h2Stream
		for id, s := range c.streams {
			if id > f.LastStreamID {
				refused = append(refused, s)
			}
		}
		c.mu.Unlock()
		for _, s := range refused {
			s.mu.Lock()
			if s.up.c == c {
				s.upstreamLost(fl, errRefusedStream) // never seen upstream
			}
			s.mu.Unlock()
		}
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // we said ENABLE_PUSH 0
	}
	return nil
}

// errRefusedStream is a stream the upstream did not process (Envoy's
// retry_on refused-stream; retryableError matches the code's name).
var errRefusedStream = errors.New("upstream refused the stream: REFUSED_STREAM")
