// Package apphealth answers the kubelet's probes of an application on the
// proxy's 15020 (/app-health/CONTAINER/readyz|livez|startupz), as Istio's
// agent does: the injector rewrites HTTP and TCP probes to it and passes
// the originals in ISTIO_KUBE_APP_PROBERS, and the proxy runs them against
// the application over localhost. The kubelet's own plaintext call would
// otherwise be refused by a STRICT inbound.
package apphealth

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Prober is one original probe, Istio's ISTIO_KUBE_APP_PROBERS value shape:
// the fields of Kubernetes' Probe that the proxy runs, decoded from the
// same JSON without Kubernetes' API types (the proxy binary leaves them out).
type Prober struct {
	HTTPGet        *HTTPGetAction   `json:"httpGet,omitempty"`
	TCPSocket      *TCPSocketAction `json:"tcpSocket,omitempty"`
	TimeoutSeconds int32            `json:"timeoutSeconds,omitempty"`
}

// HTTPGetAction is Kubernetes' HTTPGetAction less its host: the proxy
// calls the application on 127.0.0.1.
type HTTPGetAction struct {
	Path        string       `json:"path,omitempty"`
	Port        Port         `json:"port"`
	Scheme      string       `json:"scheme,omitempty"` // HTTP (default) or HTTPS
	HTTPHeaders []HTTPHeader `json:"httpHeaders,omitempty"`
}

// HTTPHeader is a header an HTTP probe sends.
type HTTPHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// TCPSocketAction is Kubernetes' TCPSocketAction less its host.
type TCPSocketAction struct {
	Port Port `json:"port"`
}

// Port is a probe's port as Kubernetes writes it (an IntOrString): a
// number, or a string, which is a number in quotes or a container port's
// name. The injector resolves names before it writes the probers; one left
// unresolved fails its probe, saying so.
type Port struct {
	Number int
	Name   string
}

// UnmarshalJSON reads a number or a string.
func (p *Port) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		if n, err := strconv.Atoi(s); err == nil {
			*p = Port{Number: n}
		} else {
			*p = Port{Name: s}
		}
		return nil
	}
	*p = Port{}
	return json.Unmarshal(b, &p.Number)
}

// addr is the application's address for the probe on localhost.
func (p Port) addr() (string, error) {
	if p.Name != "" {
		return "", fmt.Errorf("port %q is a name the injector did not resolve to a number", p.Name)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Number)), nil
}

// Probers maps a rewritten path to the original probe.
type Probers map[string]*Prober

// Parse reads ISTIO_KUBE_APP_PROBERS; empty is no probers.
func Parse(s string) (Probers, error) {
	p := Probers{}
	if strings.TrimSpace(s) == "" {
		return p, nil
	}
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		return nil, fmt.Errorf("ISTIO_KUBE_APP_PROBERS: %w", err)
	}
	return p, nil
}

// Handler serves the probers; unknown paths are 404.
func (p Probers) Handler() http.Handler {
	client := &http.Client{
		// The app's own redirects are its answer, as for the kubelet.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		// HTTPS probes are not verified, as the kubelet's are not.
		Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec

	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pr, ok := p[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		timeout := time.Duration(pr.TimeoutSeconds) * time.Second
		if timeout <= 0 {
			timeout = time.Second
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		switch {
		case pr.HTTPGet != nil:
			g := pr.HTTPGet
			scheme := "http"
			if g.Scheme == "HTTPS" {
				scheme = "https"
			}
			path := g.Path
			if !strings.HasPrefix(path, "/") {
				path = "/" + path
			}
			addr, err := g.Port.addr()
			if err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr+path, nil)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			for _, h := range g.HTTPHeaders {
				if strings.EqualFold(h.Name, "host") {
					req.Host = h.Value
				} else {
					req.Header.Add(h.Name, h.Value)
				}
			}
			req.Header.Set("User-Agent", "kube-probe/isthmus")
			resp, err := client.Do(req)
			if err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			defer resp.Body.Close()
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
			if resp.StatusCode < 200 || resp.StatusCode >= 400 {
				http.Error(w, "application answered "+resp.Status, resp.StatusCode)
				return
			}
			w.WriteHeader(resp.StatusCode)
		case pr.TCPSocket != nil:
			addr, err := pr.TCPSocket.Port.addr()
			if err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			if err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			c.Close()
		default:
			http.Error(w, "prober has neither httpGet nor tcpSocket", http.StatusInternalServerError)
		}
	})
}
