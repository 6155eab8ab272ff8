package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"
)

// ServingCert is the control plane's own certificate for its TLS port
// (DNS names such as istiod.istio-system.svc, which proxies verify against
// the trust bundle). It is re-issued at 80% of its life and whenever the
// authority changes.
type ServingCert struct {
	Store    *Store
	DNSNames []string
	TTL      time.Duration
	Log      *slog.Logger

	cur atomic.Pointer[tls.Certificate]
}

// Issue makes the first certificate: the TLS ports need it before they
// accept anyone.
func (c *ServingCert) Issue() error {
	if c.TTL == 0 {
		c.TTL = DefaultWorkloadTTL
	}
	return c.issue()
}

// Run keeps the certificate fresh until ctx ends: re-issued at 80% of its
// life and whenever the authority changes. Issue must have succeeded.
func (c *ServingCert) Run(ctx context.Context) error {
	changed := make(chan struct{}, 1)
	c.Store.Subscribe(func(*Authority) {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	for {
		leaf := c.cur.Load().Leaf
		t := time.NewTimer(time.Until(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 8 / 10)))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-changed:
		case <-t.C:
		}
		t.Stop()
		if err := c.issue(); err != nil {
			c.Log.Error("control plane serving certificate not renewed; retrying in 10 s", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(10 * time.Second):
			}
		}
	}
}

// GetCertificate is for tls.Config.
func (c *ServingCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	cert := c.cur.Load()
	if cert == nil {
		return nil, errors.New("no serving certificate yet")
	}
	return cert, nil
}

func (c *ServingCert) issue() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	chain, leaf, err := c.Store.Current().Sign(Request{PublicKey: key.Public(), DNSNames: c.DNSNames, TTL: c.TTL})
	if err != nil {
		return err
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, p := range chain[:len(chain)-1] { // the last element is the trust bundle
		blk, _ := pem.Decode([]byte(p))
		cert.Certificate = append(cert.Certificate, blk.Bytes)
	}
	c.cur.Store(cert)
	return nil
}
