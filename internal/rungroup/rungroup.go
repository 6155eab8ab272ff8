// Package rungroup runs the long-lived parts of a process together, on
// golang.org/x/sync/errgroup. Every part blocks in its run function until
// its context ends. A part that stops on its own, with or without an
// error, stops the others and is named in the group's error; once the
// group's context is canceled, whatever parts return is a clean stop
// (errors then are consequences of stopping).
package rungroup

import (
	"context"
	"fmt"

	"golang.org/x/sync/errgroup"
)

// Group is a set of running parts.
type Group struct {
	g   *errgroup.Group
	ctx context.Context
}

// New returns a group and the context its parts run under: canceled when
// ctx ends or when any part stops.
func New(ctx context.Context) (*Group, context.Context) {
	g, gctx := errgroup.WithContext(ctx)
	return &Group{g: g, ctx: gctx}, gctx
}

// Go starts a part.
func (g *Group) Go(name string, run func(ctx context.Context) error) {
	g.g.Go(func() error {
		err := run(g.ctx)
		switch {
		case g.ctx.Err() != nil:
			return nil // stopped because the group is stopping
		case err == nil:
			return fmt.Errorf("%s stopped", name)
		default:
			return fmt.Errorf("%s: %w", name, err)
		}
	})
}

// Serve runs a server as a part: serve blocks until stop is called, which
// happens when the group stops.
func (g *Group) Serve(name string, serve func() error, stop func()) {
	g.Go(name, func(ctx context.Context) error {
		done := make(chan struct{})
		defer close(done)
		go func() {
			select {
			case <-ctx.Done():
				stop()
			case <-done:
			}
		}()
		return serve()
	})
}

// Wait waits for every part and returns the first failure, if any: nil
// when the parts stopped because the group's context was canceled.
func (g *Group) Wait() error { return g.g.Wait() }
