package validation

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/isthmus-mesh/isthmus/internal/httpfield"
)

// Istio's rules below follow pkg/config/validation of istio/istio for the
// fields isthmus reads; messages say what to change.

var protocols = []string{"HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "REDIS", "MYSQL", "TCP", "TLS", "UDP"}

func checkGateway(m proto.Message, c *checker) {
	g := m.(*networking.Gateway)
	if len(g.GetServers()) == 0 {
		c.errf("spec.servers", "a gateway must have at least one server")
	}
	for i, s := range g.GetServers() {
		p := fmt.Sprintf("spec.servers[%d]", i)
		if s == nil {
			c.errf(p, "a server cannot be null")
			continue
		}
		if s.GetPort() == nil {
			c.errf(p+".port", "a server needs a port")
		} else {
			checkPortNumber(c, p+".port.number", s.GetPort().GetNumber())
			proto := strings.ToUpper(s.GetPort().GetProtocol())
			if !slices.Contains(protocols, proto) {
				c.errf(p+".port.protocol", "invalid protocol %q; supported protocols are %s", s.GetPort().GetProtocol(), strings.Join(protocols, ", "))
			}
			if (proto == "HTTPS" || proto == "TLS") && s.GetTls() == nil {
				c.errf(p+".tls", "a server with protocol %s must have TLS settings", proto)
			}
		}
		if len(s.GetHosts()) == 0 {
			c.errf(p+".hosts", "a server must have at least one host")
		}
		for j, h := range s.GetHosts() {
			ns, host, found := strings.Cut(h, "/")
			if !found {
				ns, host = "", h
			} else if ns != "*" && ns != "." {
				if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
					c.errf(fmt.Sprintf("%s.hosts[%d]", p, j), "namespace %q of %q: %s", ns, h, errs[0])
				}
			}
			if err := wildcardHost(host); err != nil {
				c.errf(fmt.Sprintf("%s.hosts[%d]", p, j), "%v", err)
			}
		}
		if t := s.GetTls(); t != nil {
			switch t.GetMode() {
			case networking.ServerTLSSettings_SIMPLE, networking.ServerTLSSettings_MUTUAL:
				if t.GetCredentialName() == "" && (t.GetServerCertificate() == "" || t.GetPrivateKey() == "") {
					c.errf(p+".tls", "%s TLS needs credentialName (or serverCertificate and privateKey)", t.GetMode())
				}
				if t.GetMode() == networking.ServerTLSSettings_MUTUAL && t.GetCredentialName() == "" && t.GetCaCertificates() == "" {
					c.errf(p+".tls", "MUTUAL TLS needs credentialName or caCertificates to verify clients with")
				}
			}
		}
	}
}

func checkVirtualService(m proto.Message, c *checker) {
	vs := m.(*networking.VirtualService)
	if len(vs.GetHosts()) == 0 {
		c.errf("spec.hosts", "a virtual service must have at least one host")
	}
	mesh := len(vs.GetGateways()) == 0 || slices.Contains(vs.GetGateways(), "mesh")
	for i, h := range vs.GetHosts() {
		p := fmt.Sprintf("spec.hosts[%d]", i)
		if h == "*" && mesh {
			c.errf(p, "wildcard host * is not allowed for virtual services bound to the mesh gateway")
			continue
		}
		if _, err := netip.ParseAddr(h); err == nil {
			continue
		}
		if err := wildcardHost(h); err != nil {
			c.errf(p, "%v", err)
		}
	}
	for i, g := range vs.GetGateways() {
		checkGatewayRef(c, fmt.Sprintf("spec.gateways[%d]", i), g)
	}
	if len(vs.GetHttp())+len(vs.GetTcp())+len(vs.GetTls()) == 0 {
		c.errf("spec", "http, tcp or tls must be provided in a virtual service")
	}
	for i, hr := range vs.GetHttp() {
		p := fmt.Sprintf("spec.http[%d]", i)
		if hr == nil {
			c.errf(p, "an http route cannot be null")
			continue
		}
		switch {
		case len(hr.GetRoute()) == 0 && hr.GetRedirect() == nil && hr.GetDirectResponse() == nil && hr.GetDelegate() == nil:
			c.errf(p, "an http route needs route, redirect, directResponse or delegate")
		case len(hr.GetRoute()) > 0 && hr.GetRedirect() != nil:
			c.errf(p, "an http route cannot have both route and redirect")
		case hr.GetDirectResponse() != nil && (len(hr.GetRoute()) > 0 || hr.GetRedirect() != nil):
			c.errf(p, "an http route with directResponse cannot have route or redirect")
		}
		if rd := hr.GetRedirect(); rd != nil {
			if code := rd.GetRedirectCode(); code != 0 && (code < 300 || code > 399) {
				c.errf(p+".redirect.redirectCode", "%d is not a redirect code (3xx)", code)
			}
		}
		if dr := hr.GetDirectResponse(); dr != nil && (dr.GetStatus() < 200 || dr.GetStatus() > 599) {
			c.errf(p+".directResponse.status", "%d is not in the range 200..599", dr.GetStatus())
		}
		checkMirrors(c, p, hr)
		checkHeaderOps(c, p+".headers", hr.GetHeaders())
		if cp := hr.GetCorsPolicy(); cp != nil {
			checkCORS(c, p+".corsPolicy", cp)
		}
		for j, d := range hr.GetRoute() {
			checkHeaderOps(c, fmt.Sprintf("%s.route[%d].headers", p, j), d.GetHeaders())
		}
		if rr := hr.GetRewrite().GetUriRegexRewrite(); rr != nil {
			if _, err := regexp.Compile(rr.GetMatch()); err != nil {
				c.errf(p+".rewrite.uriRegexRewrite.match", "%v", err)
			}
		}
		for j, mr := range hr.GetMatch() {
			mp := fmt.Sprintf("%s.match[%d]", p, j)
			if mr == nil {
				continue
			}
			checkStringMatch(c, mp+".uri", mr.GetUri())
			checkStringMatch(c, mp+".method", mr.GetMethod())
			for _, hs := range []struct {
				field string
				m     map[string]*networking.StringMatch
			}{{"headers", mr.GetHeaders()}, {"withoutHeaders", mr.GetWithoutHeaders()}} {
				for name, sm := range hs.m {
					if name == "" {
						c.errf(mp+"."+hs.field, "a header name cannot be empty")
					}
					checkStringMatch(c, mp+"."+hs.field+"["+name+"]", sm)
				}
			}
			if mr.GetPort() != 0 {
				checkPortNumber(c, mp+".port", mr.GetPort())
			}
			for k, g := range mr.GetGateways() {
				checkGatewayRef(c, fmt.Sprintf("%s.gateways[%d]", mp, k), g)
			}
		}
		for j, d := range hr.GetRoute() {
			checkDestination(c, fmt.Sprintf("%s.route[%d]", p, j), d.GetDestination(), d.GetWeight())
		}
		if hr.GetTimeout() != nil {
			checkDuration(c, p+".timeout", hr.GetTimeout())
		}
		if r := hr.GetRetries(); r != nil {
			if r.GetAttempts() < 0 {
				c.errf(p+".retries.attempts", "attempts cannot be negative (%d)", r.GetAttempts())
			}
			if r.GetPerTryTimeout() != nil {
				checkDuration(c, p+".retries.perTryTimeout", r.GetPerTryTimeout())
			}
			for _, on := range strings.Split(r.GetRetryOn(), ",") {
				on = strings.TrimSpace(on)
				if on == "" {
					continue
				}
				if code, err := strconv.Atoi(on); err == nil {
					if code < 100 || code > 599 {
						c.errf(p+".retries.retryOn", "%d is not an HTTP status code", code)
					}
					continue
				}
				if !slices.Contains(retryOn, on) {
					c.errf(p+".retries.retryOn", "%q is not a retry condition; use HTTP status codes or %s", on, strings.Join(retryOn, ", "))
				}
			}
		}
		if f := hr.GetFault(); f != nil {
			if d := f.GetDelay(); d != nil {
				checkPercentage(c, p+".fault.delay.percentage.value", d.GetPercentage())
				if d.GetPercent() < 0 || d.GetPercent() > 100 {
					c.errf(p+".fault.delay.percent", "%d is not in range [0, 100]", d.GetPercent())
				}
				if fd := d.GetFixedDelay(); fd != nil {
					checkDuration(c, p+".fault.delay.fixedDelay", fd)
				} else if d.GetExponentialDelay() == nil {
					c.errf(p+".fault.delay", "a delay needs fixedDelay")
				}
			}
			if a := f.GetAbort(); a != nil {
				checkPercentage(c, p+".fault.abort.percentage.value", a.GetPercentage())
				if s := a.GetHttpStatus(); a.GetGrpcStatus() == "" && (s < 200 || s > 599) {
					c.errf(p+".fault.abort.httpStatus", "invalid abort http status %d; want 200..599", s)
				}
			}
			if f.GetDelay() == nil && f.GetAbort() == nil {
				c.errf(p+".fault", "a fault needs delay or abort")
			}
		}
	}
	for i, tr := range vs.GetTcp() {
		p := fmt.Sprintf("spec.tcp[%d]", i)
		if len(tr.GetRoute()) == 0 {
			c.errf(p+".route", "a tcp route needs at least one destination")
		}
		for j, d := range tr.GetRoute() {
			checkDestination(c, fmt.Sprintf("%s.route[%d]", p, j), d.GetDestination(), d.GetWeight())
		}
		for j, mr := range tr.GetMatch() {
			if mr.GetPort() != 0 {
				checkPortNumber(c, fmt.Sprintf("%s.match[%d].port", p, j), mr.GetPort())
			}
		}
	}
	for i, tr := range vs.GetTls() {
		p := fmt.Sprintf("spec.tls[%d]", i)
		if len(tr.GetMatch()) == 0 {
			c.errf(p+".match", "a tls route needs at least one match")
		}
		for j, mr := range tr.GetMatch() {
			if len(mr.GetSniHosts()) == 0 {
				c.errf(fmt.Sprintf("%s.match[%d].sniHosts", p, j), "a tls match needs at least one SNI host")
			}
			for k, h := range mr.GetSniHosts() {
				if err := wildcardHost(h); err != nil {
					c.errf(fmt.Sprintf("%s.match[%d].sniHosts[%d]", p, j, k), "%v", err)
				}
			}
		}
		if len(tr.GetRoute()) == 0 {
			c.errf(p+".route", "a tls route needs at least one destination")
		}
		for j, d := range tr.GetRoute() {
			checkDestination(c, fmt.Sprintf("%s.route[%d]", p, j), d.GetDestination(), d.GetWeight())
		}
	}
}

// retryOn are Envoy's retry conditions Istio accepts in retryOn.
var retryOn = []string{"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited", "retriable-4xx",
	"refused-stream", "retriable-status-codes", "retriable-headers", "http3-post-connect-failure",
	"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}

func checkDestinationRule(m proto.Message, c *checker) {
	dr := m.(*networking.DestinationRule)
	if dr.GetHost() == "" {
		c.errf("spec.host", "a destination rule needs a host")
	} else if err := wildcardHost(dr.GetHost()); err != nil {
		c.errf("spec.host", "%v", err)
	}
	checkTrafficPolicy(c, "spec.trafficPolicy", dr.GetTrafficPolicy())
	seen := map[string]bool{}
	for i, s := range dr.GetSubsets() {
		p := fmt.Sprintf("spec.subsets[%d]", i)
		switch {
		case s.GetName() == "":
			c.errf(p+".name", "a subset needs a name")
		case len(validation.IsDNS1123Label(s.GetName())) > 0:
			c.errf(p+".name", "subset name %q must be a DNS label (lowercase letters, digits and '-')", s.GetName())
		case seen[s.GetName()]:
			c.errf(p+".name", "duplicate subset name %q", s.GetName())
		}
		seen[s.GetName()] = true
		checkTrafficPolicy(c, p+".trafficPolicy", s.GetTrafficPolicy())
	}
}

func checkTrafficPolicy(c *checker, p string, tp *networking.TrafficPolicy) {
	if tp == nil {
		return
	}
	checkSettings(c, p, tp.GetLoadBalancer(), tp.GetConnectionPool(), tp.GetOutlierDetection())
	checkClientTLS(c, p+".tls", tp.GetTls())
	ports := map[uint32]bool{}
	for i, pl := range tp.GetPortLevelSettings() {
		pp := fmt.Sprintf("%s.portLevelSettings[%d]", p, i)
		if pl.GetPort() == nil {
			c.errf(pp+".port", "a port level setting needs a port")
		} else {
			checkPortNumber(c, pp+".port.number", pl.GetPort().GetNumber())
			if ports[pl.GetPort().GetNumber()] {
				c.errf(pp+".port.number", "port %d has two port level settings", pl.GetPort().GetNumber())
			}
			ports[pl.GetPort().GetNumber()] = true
		}
		checkSettings(c, pp, pl.GetLoadBalancer(), pl.GetConnectionPool(), pl.GetOutlierDetection())
		checkClientTLS(c, pp+".tls", pl.GetTls())
	}
}

// checkClientTLS refuses what no proxy could originate TLS with, as
// Istio's validation does.
func checkClientTLS(c *checker, p string, t *networking.ClientTLSSettings) {
	if t == nil {
		return
	}
	if len(t.GetSni()) > 255 || strings.ContainsAny(t.GetSni(), " \t\r\n") {
		c.errf(p+".sni", "%q is not a server name", t.GetSni())
	}
	for i, san := range t.GetSubjectAltNames() {
		if san == "" {
			c.errf(fmt.Sprintf("%s.subjectAltNames[%d]", p, i), "a subject alt name cannot be empty")
		}
	}
	mode := t.GetMode()
	if (mode == networking.ClientTLSSettings_SIMPLE || mode == networking.ClientTLSSettings_MUTUAL) &&
		t.GetCredentialName() != "" && (t.GetClientCertificate() != "" || t.GetPrivateKey() != "" || t.GetCaCertificates() != "") {
		c.errf(p, "credentialName excludes clientCertificate, privateKey and caCertificates")
	}
}

func checkSettings(c *checker, p string, lb *networking.LoadBalancerSettings, cp *networking.ConnectionPoolSettings, od *networking.OutlierDetection) {
	if ls := lb.GetLocalityLbSetting(); ls != nil {
		lp := p + ".loadBalancer.localityLbSetting"
		if len(ls.GetDistribute()) > 0 && len(ls.GetFailover()) > 0 {
			c.errf(lp, "distribute and failover cannot be set together")
		}
		for i, d := range ls.GetDistribute() {
			var sum uint32
			for _, w := range d.GetTo() {
				sum += w
			}
			if sum != 100 {
				c.errf(fmt.Sprintf("%s.distribute[%d].to", lp, i), "locality weights add up to %d; they must add up to 100", sum)
			}
		}
		for i, f := range ls.GetFailover() {
			if f.GetFrom() == f.GetTo() {
				c.errf(fmt.Sprintf("%s.failover[%d]", lp, i), "failover from %q to itself", f.GetFrom())
			}
		}
	}
	if t := cp.GetTcp(); t != nil {
		if t.GetMaxConnections() < 0 {
			c.errf(p+".connectionPool.tcp.maxConnections", "must not be negative (%d)", t.GetMaxConnections())
		}
		if t.GetConnectTimeout() != nil {
			checkDuration(c, p+".connectionPool.tcp.connectTimeout", t.GetConnectTimeout())
		}
	}
	if h := cp.GetHttp(); h != nil {
		for name, v := range map[string]int32{"http1MaxPendingRequests": h.GetHttp1MaxPendingRequests(), "http2MaxRequests": h.GetHttp2MaxRequests(),
			"maxRequestsPerConnection": h.GetMaxRequestsPerConnection(), "maxRetries": h.GetMaxRetries()} {
			if v < 0 {
				c.errf(p+".connectionPool.http."+name, "must not be negative (%d)", v)
			}
		}
		if h.GetIdleTimeout() != nil {
			checkDuration(c, p+".connectionPool.http.idleTimeout", h.GetIdleTimeout())
		}
	}
	if od != nil {
		op := p + ".outlierDetection"
		if od.GetConsecutiveErrors() < 0 {
			c.errf(op+".consecutiveErrors", "must not be negative (%d)", od.GetConsecutiveErrors())
		}
		if od.GetInterval() != nil {
			checkDuration(c, op+".interval", od.GetInterval())
		}
		if od.GetBaseEjectionTime() != nil {
			checkDuration(c, op+".baseEjectionTime", od.GetBaseEjectionTime())
		}
		if v := od.GetMaxEjectionPercent(); v < 0 || v > 100 {
			c.errf(op+".maxEjectionPercent", "%d is not in range [0, 100]", v)
		}
		if v := od.GetMinHealthPercent(); v < 0 || v > 100 {
			c.errf(op+".minHealthPercent", "%d is not in range [0, 100]", v)
		}
	}
}

func checkServiceEntry(m proto.Message, c *checker) {
	se := m.(*networking.ServiceEntry)
	if len(se.GetHosts()) == 0 {
		c.errf("spec.hosts", "a service entry must have at least one host")
	}
	for i, h := range se.GetHosts() {
		if err := wildcardHost(h); err != nil {
			c.errf(fmt.Sprintf("spec.hosts[%d]", i), "%v", err)
		}
	}
	for i, p := range se.GetPorts() {
		checkPortNumber(c, fmt.Sprintf("spec.ports[%d].number", i), p.GetNumber())
	}
}

func checkSidecar(m proto.Message, c *checker) {
	sc := m.(*networking.Sidecar)
	checkLabels(c, "spec.workloadSelector.labels", sc.GetWorkloadSelector().GetLabels())
	checkSidecarIngress(c, sc)
	for i, l := range sc.GetEgress() {
		p := fmt.Sprintf("spec.egress[%d]", i)
		if len(l.GetHosts()) == 0 {
			c.errf(p+".hosts", "an egress listener needs at least one host")
		}
		for j, h := range l.GetHosts() {
			ns, host, ok := strings.Cut(h, "/")
			if !ok || ns == "" || host == "" {
				c.errf(fmt.Sprintf("%s.hosts[%d]", p, j), "%q is not namespace/dnsName (./*, */*, istio-system/*, ns/host.example.com)", h)
				continue
			}
			if err := wildcardHost(host); err != nil {
				c.errf(fmt.Sprintf("%s.hosts[%d]", p, j), "%v", err)
			}
		}
	}
}

// checkSidecarIngress refuses an ingress defaultEndpoint that is none of
// Istio's forms: 127.0.0.1:PORT, 0.0.0.0:PORT, unix://PATH.
func checkSidecarIngress(c *checker, sc *networking.Sidecar) {
	for i, in := range sc.GetIngress() {
		p := fmt.Sprintf("spec.ingress[%d]", i)
		checkPortNumber(c, p+".port.number", in.GetPort().GetNumber())
		ep := in.GetDefaultEndpoint()
		if ep == "" || strings.HasPrefix(ep, "unix://") {
			continue
		}
		host, port, ok := strings.Cut(ep, ":")
		if n, err := strconv.Atoi(port); !ok || (host != "127.0.0.1" && host != "0.0.0.0") || err != nil || n < 1 || n > 65535 {
			c.errf(p+".defaultEndpoint", "%q is not 127.0.0.1:PORT, 0.0.0.0:PORT or unix://PATH", ep)
		}
	}
}

func checkWorkloadEntry(m proto.Message, c *checker) {
	we := m.(*networking.WorkloadEntry)
	if we.GetAddress() == "" && we.GetNetwork() == "" {
		c.errf("spec.address", "an address is required (Istio allows none only with a network, reached through its gateway)")
	}
	for name, p := range we.GetPorts() {
		checkPortNumber(c, "spec.ports["+name+"]", p)
	}
	checkLabels(c, "spec.labels", we.GetLabels())
}

func checkPeerAuthentication(m proto.Message, c *checker) {
	pa := m.(*security.PeerAuthentication)
	if len(pa.GetPortLevelMtls()) > 0 && len(pa.GetSelector().GetMatchLabels()) == 0 {
		c.errf("spec.portLevelMtls", "port level mTLS settings need a workload selector")
	}
	for port := range pa.GetPortLevelMtls() {
		checkPortNumber(c, fmt.Sprintf("spec.portLevelMtls[%d]", port), port)
	}
	checkLabels(c, "spec.selector.matchLabels", pa.GetSelector().GetMatchLabels())
}

func checkRequestAuthentication(m proto.Message, c *checker) {
	ra := m.(*security.RequestAuthentication)
	checkLabels(c, "spec.selector.matchLabels", ra.GetSelector().GetMatchLabels())
	for i, r := range ra.GetJwtRules() {
		p := fmt.Sprintf("spec.jwtRules[%d]", i)
		if r.GetIssuer() == "" {
			c.errf(p+".issuer", "an issuer is required")
		}
		if u := r.GetJwksUri(); u != "" {
			if pu, err := url.Parse(u); err != nil || pu.Scheme != "http" && pu.Scheme != "https" || pu.Host == "" {
				c.errf(p+".jwksUri", "%q is not an http or https URL", u)
			}
		}
		if r.GetJwksUri() != "" && r.GetJwks() != "" {
			c.errf(p, "jwksUri and jwks are exclusive")
		}
		if j := r.GetJwks(); j != "" {
			var set struct {
				Keys []json.RawMessage `json:"keys"`
			}
			if err := json.Unmarshal([]byte(j), &set); err != nil || len(set.Keys) == 0 {
				c.errf(p+".jwks", "not a JSON Web Key Set with keys")
			}
		}
		for j, h := range r.GetFromHeaders() {
			if h.GetName() == "" {
				c.errf(fmt.Sprintf("%s.fromHeaders[%d].name", p, j), "a header name is required")
			}
		}
	}
}

// conditionKeys are the `when` keys Istio knows; those isthmus enforces
// are marked true.
var conditionKeys = map[string]bool{"source.ip": true, "source.namespace": true, "source.principal": true, "destination.port": true,
	"remote.ip": true, "request.auth.principal": true, "request.auth.audiences": true, "request.auth.presenter": true,
	"destination.ip": false, "connection.sni": false}

func checkAuthorizationPolicy(m proto.Message, c *checker) {
	ap := m.(*security.AuthorizationPolicy)
	checkLabels(c, "spec.selector.matchLabels", ap.GetSelector().GetMatchLabels())
	if ap.GetAction() == security.AuthorizationPolicy_CUSTOM && ap.GetProvider() == nil {
		c.errf("spec.provider", "the CUSTOM action needs a provider")
	}
	if ap.GetProvider() != nil && ap.GetAction() != security.AuthorizationPolicy_CUSTOM {
		c.errf("spec.provider", "a provider is only allowed with the CUSTOM action")
	}
	for i, r := range ap.GetRules() {
		p := fmt.Sprintf("spec.rules[%d]", i)
		if r == nil {
			c.errf(p, "a rule cannot be null")
			continue
		}
		for j, f := range r.GetFrom() {
			fp := fmt.Sprintf("%s.from[%d].source", p, j)
			s := f.GetSource()
			if s == nil || proto.Size(s) == 0 {
				c.errf(fp, "`from.source` must not be empty")
				continue
			}
			checkFields(c, fp, nil, listField{"principals", s.GetPrincipals()}, listField{"notPrincipals", s.GetNotPrincipals()},
				listField{"namespaces", s.GetNamespaces()}, listField{"notNamespaces", s.GetNotNamespaces()})
			checkFields(c, fp, ipOrCIDR, listField{"ipBlocks", s.GetIpBlocks()}, listField{"notIpBlocks", s.GetNotIpBlocks()},
				listField{"remoteIpBlocks", s.GetRemoteIpBlocks()}, listField{"notRemoteIpBlocks", s.GetNotRemoteIpBlocks()})
		}
		for j, t := range r.GetTo() {
			tp := fmt.Sprintf("%s.to[%d].operation", p, j)
			o := t.GetOperation()
			if o == nil || proto.Size(o) == 0 {
				c.errf(tp, "`to.operation` must not be empty")
				continue
			}
			checkFields(c, tp, nil, listField{"methods", o.GetMethods()}, listField{"notMethods", o.GetNotMethods()},
				listField{"paths", o.GetPaths()}, listField{"notPaths", o.GetNotPaths()}, listField{"hosts", o.GetHosts()}, listField{"notHosts", o.GetNotHosts()})
			checkFields(c, tp, port, listField{"ports", o.GetPorts()}, listField{"notPorts", o.GetNotPorts()})
		}
		for j, w := range r.GetWhen() {
			wp := fmt.Sprintf("%s.when[%d]", p, j)
			k := w.GetKey()
			switch {
			case k == "":
				c.errf(wp+".key", "`key` must not be empty")
			case !knownKey(k):
				c.errf(wp+".key", "unknown attribute %q", k)
			}
			if len(w.GetValues()) == 0 && len(w.GetNotValues()) == 0 {
				c.errf(wp, "at least one of `values` or `notValues` must be set")
			}
			var check func(string) error
			switch k {
			case "source.ip", "remote.ip", "destination.ip":
				check = ipOrCIDR
			case "destination.port":
				check = port
			}
			checkValues(c, wp+".values", w.GetValues(), check)
			checkValues(c, wp+".notValues", w.GetNotValues(), check)
		}
	}
}

// checkMirrors is Istio's validation of mirror, its percentages and mirrors.
func checkMirrors(c *checker, p string, hr *networking.HTTPRoute) {
	percent := func(path string, v float64) {
		if v < 0 || v > 100 {
			c.errf(path, "%g is not a percentage (0..100)", v)
		}
	}
	if hr.GetMirror() != nil && len(hr.GetMirrors()) > 0 {
		c.errf(p, "an http route cannot have both mirror and mirrors")
	}
	if m := hr.GetMirror(); m != nil && m.GetHost() == "" {
		c.errf(p+".mirror.host", "a mirror needs a host")
	}
	if mp := hr.GetMirrorPercentage(); mp != nil {
		percent(p+".mirrorPercentage.value", mp.GetValue())
	}
	if v := hr.GetMirrorPercent().GetValue(); v > 100 { //nolint:staticcheck // Istio still reads the deprecated field
		c.errf(p+".mirrorPercent", "%d is more than 100", v)
	}
	for i, m := range hr.GetMirrors() {
		mp := fmt.Sprintf("%s.mirrors[%d]", p, i)
		if m.GetDestination().GetHost() == "" {
			c.errf(mp+".destination.host", "a mirror needs a destination host")
		}
		if m.GetPercentage() != nil {
			percent(mp+".percentage.value", m.GetPercentage().GetValue())
		}
	}
}

// Unsupported says which accepted values isthmus does not act on, beyond
// fields: actions and condition keys, ServiceEntry hosts.
func unsupportedValues(m proto.Message) []string {
	if se, ok := m.(*networking.ServiceEntry); ok {
		var out []string
		for i, h := range se.GetHosts() {
			if strings.HasPrefix(h, "*") {
				out = append(out, fmt.Sprintf("spec.hosts[%d]: wildcard host %s: not supported by isthmus; ignored", i, h))
			}
		}
		for i, a := range se.GetAddresses() {
			if strings.Contains(a, "/") {
				out = append(out, fmt.Sprintf("spec.addresses[%d]: CIDR %s: not supported by isthmus (single addresses are); ignored", i, a))
			}
		}
		return out
	}
	if sc, ok := m.(*networking.Sidecar); ok {
		var out []string
		for i, in := range sc.GetIngress() {
			if strings.HasPrefix(in.GetDefaultEndpoint(), "unix://") {
				out = append(out, fmt.Sprintf("spec.ingress[%d].defaultEndpoint: a unix socket is not supported by isthmus; the listener is not built", i))
			}
		}
		return out
	}
	if we, ok := m.(*networking.WorkloadEntry); ok {
		if we.GetAddress() != "" && net.ParseIP(we.GetAddress()) == nil {
			return []string{"spec.address: " + we.GetAddress() + " is not an IP address: isthmus uses such entries only as endpoints of DNS ServiceEntries (no Kubernetes Service selects it, no proxy connects as it)"}
		}
		if we.GetAddress() == "" {
			return []string{"spec.address: an entry without an address is not supported by isthmus; ignored"}
		}
	}
	ap, ok := m.(*security.AuthorizationPolicy)
	if !ok {
		return nil
	}
	var out []string
	switch ap.GetAction() {
	case security.AuthorizationPolicy_CUSTOM:
		out = append(out, "spec.action: CUSTOM has no external authorizer in isthmus; the requests the policy matches are denied")
	}
	for i, r := range ap.GetRules() {
		for j, w := range r.GetWhen() {
			k := w.GetKey()
			if knownKey(k) && !conditionKeys[k] && !(strings.HasPrefix(k, "request.headers[") || strings.HasPrefix(k, "request.auth.claims[")) {
				out = append(out, fmt.Sprintf("spec.rules[%d].when[%d].key: %s %s", i, j, k, FailsClosed))
			}
		}
	}
	return out
}

// FailsClosed is what becomes of a policy rule with a part isthmus does
// not enforce.
const FailsClosed = "not enforced by isthmus; an ALLOW rule with it allows nothing, a DENY rule denies as if it held"

func knownKey(k string) bool {
	if _, ok := conditionKeys[k]; ok {
		return true
	}
	for _, prefix := range []string{"request.headers[", "request.auth.claims[", "experimental.envoy.filters."} {
		if strings.HasPrefix(k, prefix) {
			return !strings.HasSuffix(prefix, "[") || strings.HasSuffix(k, "]")
		}
	}
	return false
}

// listField is one list-valued field of a policy and its name.
type listField struct {
	name string
	vals []string
}

// checkFields runs checkValues over fields in order, so that several
// errors of one object are reported the same way every time (a map did
// not).
func checkFields(c *checker, p string, check func(string) error, fields ...listField) {
	for _, f := range fields {
		checkValues(c, p+"."+f.name, f.vals, check)
	}
}

func checkValues(c *checker, p string, vals []string, check func(string) error) {
	for i, v := range vals {
		if v == "" {
			c.errf(fmt.Sprintf("%s[%d]", p, i), "empty values are not allowed")
			continue
		}
		if check != nil {
			if err := check(v); err != nil {
				c.errf(fmt.Sprintf("%s[%d]", p, i), "%v", err)
			}
		}
	}
}

func ipOrCIDR(v string) error {
	if _, err := netip.ParseAddr(v); err == nil {
		return nil
	}
	if _, err := netip.ParsePrefix(v); err != nil {
		return fmt.Errorf("%q is not an IP address or CIDR range", v)
	}
	return nil
}

func port(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q is not a port number (0..65535)", v)
	}
	return nil
}

func checkLabels(c *checker, p string, labels map[string]string) {
	for k, v := range labels {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			c.errf(p, "label key %q: %s", k, errs[0])
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			c.errf(p+"["+k+"]", "label value %q: %s", v, errs[0])
		}
	}
}

// checkHeaderOps refuses header operations on names that are not tokens,
// pseudo-headers, the Host (rewrite.authority sets it) or framing fields
// (Content-Length, Transfer-Encoding, Connection...: a route must not
// reframe messages on shared connections), and values with control
// characters.
func checkHeaderOps(c *checker, p string, h *networking.Headers) {
	for _, dir := range []string{"request", "response"} {
		ops := h.GetRequest()
		if dir == "response" {
			ops = h.GetResponse()
		}
		values := map[string]string{}
		for n, v := range ops.GetSet() {
			values[n] = v
		}
		for n, v := range ops.GetAdd() {
			values[n] = v
		}
		names := slices.Sorted(maps.Keys(values))
		for _, n := range append(names, ops.GetRemove()...) {
			if err := httpfield.Settable(n); err != nil {
				c.errf(p+"."+dir, "%v", err)
			}
		}
		for _, n := range names {
			if err := httpfield.ValidValue(values[n]); err != nil {
				c.errf(p+"."+dir, "%s: %v", n, err)
			}
		}
	}
}

// checkCORS refuses what cannot go into the CORS headers: methods and
// header names that are not tokens.
func checkCORS(c *checker, p string, cp *networking.CorsPolicy) {
	for _, l := range []struct {
		field string
		list  []string
	}{{"allowMethods", cp.GetAllowMethods()}, {"allowHeaders", cp.GetAllowHeaders()}, {"exposeHeaders", cp.GetExposeHeaders()}} {
		for i, t := range l.list {
			if !httpfield.IsToken(t) && t != "*" {
				c.errf(fmt.Sprintf("%s.%s[%d]", p, l.field, i), "%q is not an HTTP token", t)
			}
		}
	}
	if cp.GetMaxAge() != nil {
		checkDuration(c, p+".maxAge", cp.GetMaxAge())
	}
}

func checkPortNumber(c *checker, p string, n uint32) {
	if n == 0 || n > 65535 {
		c.errf(p, "port number %d must be in the range 1..65535", n)
	}
}

func checkDestination(c *checker, p string, d *networking.Destination, weight int32) {
	if d == nil {
		c.errf(p+".destination", "a destination is required")
		return
	}
	if d.GetHost() == "" {
		c.errf(p+".destination.host", "a destination needs a host")
	} else if err := wildcardHost(d.GetHost()); err != nil {
		c.errf(p+".destination.host", "%v", err)
	}
	if s := d.GetSubset(); s != "" && len(validation.IsDNS1123Label(s)) > 0 {
		c.errf(p+".destination.subset", "subset name %q must be a DNS label", s)
	}
	if d.GetPort() != nil && d.GetPort().GetNumber() > 65535 {
		c.errf(p+".destination.port.number", "port number %d must be in the range 1..65535", d.GetPort().GetNumber())
	}
	if weight < 0 {
		c.errf(p+".weight", "weight %d < 0; weights must not be negative", weight)
	}
}

func checkStringMatch(c *checker, p string, m *networking.StringMatch) {
	if m == nil {
		return
	}
	if r, ok := m.GetMatchType().(*networking.StringMatch_Regex); ok {
		if _, err := regexp.Compile(r.Regex); err != nil {
			c.errf(p+".regex", "invalid regular expression %q: %v", r.Regex, err)
		}
	}
}

func checkGatewayRef(c *checker, p, ref string) {
	if ref == "mesh" {
		return
	}
	ns, name, found := strings.Cut(ref, "/")
	if !found {
		ns, name = "", ref
	}
	if ns != "" && len(validation.IsDNS1123Label(ns)) > 0 {
		c.errf(p, "gateway %q: namespace %q is not a DNS label", ref, ns)
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		c.errf(p, "gateway %q: name %q: %s", ref, name, errs[0])
	}
}

// checkDuration: at least 1 ms, in whole milliseconds (Istio's rule).
func checkDuration(c *checker, p string, d *durationpb.Duration) {
	dur := d.AsDuration()
	switch {
	case dur < time.Millisecond:
		c.errf(p, "duration %s must be at least 1ms", dur)
	case dur%time.Millisecond != 0:
		c.errf(p, "duration %s: only whole milliseconds are supported", dur)
	}
}

func checkPercentage(c *checker, p string, pct *networking.Percent) {
	if pct == nil {
		return
	}
	if v := pct.GetValue(); v < 0 || v > 100 {
		c.errf(p, "percentage %v is not in range [0, 100]", v)
	}
}

// wildcardHost accepts "*", "*.example.com" and DNS names, as Istio's
// ValidateWildcardDomain does.
func wildcardHost(h string) error {
	if h == "" {
		return fmt.Errorf("a host cannot be empty")
	}
	if h == "*" {
		return nil
	}
	name := strings.TrimPrefix(h, "*.")
	if len(h) > 255 {
		return fmt.Errorf("host %q is longer than 255 characters", h)
	}
	for _, label := range strings.Split(name, ".") {
		if errs := validation.IsDNS1123Label(strings.ToLower(label)); len(errs) > 0 {
			return fmt.Errorf("host %q: label %q: %s (a wildcard may only be a leading \"*.\")", h, label, errs[0])
		}
	}
	return nil
}
