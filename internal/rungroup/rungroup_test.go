package rungroup

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestAFailingPartStopsTheOthersAndIsNamed(t *testing.T) {
	g, _ := New(context.Background())
	stopped := make(chan struct{})
	g.Go("waiter", func(ctx context.Context) error { <-ctx.Done(); close(stopped); return ctx.Err() })
	g.Go("breaker", func(context.Context) error { return errors.New("boom") })
	if err := g.Wait(); err == nil || err.Error() != "breaker: boom" {
		t.Fatalf("err %v, want the failing part named", err)
	}
	<-stopped
}

func TestAPartThatStopsOnItsOwnIsAFailure(t *testing.T) {
	g, _ := New(context.Background())
	g.Go("quitter", func(context.Context) error { return nil })
	g.Go("waiter", func(ctx context.Context) error { <-ctx.Done(); return nil })
	if err := g.Wait(); err == nil || !strings.Contains(err.Error(), "quitter stopped") {
		t.Fatalf("err %v", err)
	}
}

func TestCancelIsACleanStop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	g, _ := New(ctx)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: time.Second}
	g.Serve("http", func() error {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}, func() { _ = srv.Close() })
	g.Go("worker", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	time.AfterFunc(50*time.Millisecond, cancel)
	if err := g.Wait(); err != nil {
		t.Fatalf("a canceled group returned %v", err)
	}
}
