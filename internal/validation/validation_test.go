package validation

import (
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func validate(t *testing.T, doc string) Result {
	t.Helper()
	j, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	r, ok, err := Object(j)
	if err != nil || !ok {
		t.Fatalf("Object: ok %v, %v", ok, err)
	}
	return r
}

const vsHead = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: ns}\nspec:\n"

// Objects Istio refuses are refused with the field named; objects Istio
// accepts pass.
func TestRefusals(t *testing.T) {
	for _, c := range []struct{ doc, want string }{
		{vsHead + "  hosts: [a]\n  http:\n  - timeout: 2x\n    route: [{destination: {host: a}}]\n", `spec.http[0].timeout: bad Duration: time: unknown unit "x" in duration "2x"`},
		{vsHead + "  hosts: [a]\n  http:\n  - route: [{destination: {host: a}, weight: -10}]\n", "spec.http[0].route[0].weight: weight -10 < 0"},
		{vsHead + "  hosts: [a]\n  http:\n  - retries: {attempts: -1}\n    route: [{destination: {host: a}}]\n", "spec.http[0].retries.attempts: attempts cannot be negative"},
		{vsHead + "  hosts: [a]\n  http:\n  - fault: {abort: {httpStatus: 503, percentage: {value: 150}}}\n    route: [{destination: {host: a}}]\n", "spec.http[0].fault.abort.percentage.value: percentage 150 is not in range [0, 100]"},
		{vsHead + "  hosts: [a]\n  http:\n  - route: [{destination: {host: a}}]\n    timeout: 0.5ms\n", "spec.http[0].timeout: duration 500µs must be at least 1ms"},
		{vsHead + "  hosts: [\"*\"]\n  http:\n  - route: [{destination: {host: a}}]\n", "wildcard host * is not allowed"},
		{vsHead + "  hosts: [a]\n", "http, tcp or tls must be provided"},
		{vsHead + "  hosts: [a]\n  http:\n  - route: [{destination: {host: a}}]\n    retries: {attempts: 2, retryOn: \"5xx,bogus\"}\n", `spec.http[0].retries.retryOn: "bogus" is not a retry condition`},
		{vsHead + "  hosts: [a]\n  http:\n  - route: [{destination: {host: a}}]\n    mirorr: {host: b}\n", "spec.http[0].mirorr: unknown field"},
		{vsHead + "  hosts: [a]\n  http:\n  - route: [{destination: {host: a}}]\n    mirror: {host: b}\n    mirrorPercentage: {value: 101}\n", "spec.http[0].mirrorPercentage.value: 101 is not a percentage (0..100)"},
		{vsHead + "  hosts: [a]\n  http:\n  - route: [{destination: {host: a}}]\n    mirror: {host: b}\n    mirrors: [{destination: {host: c}}]\n", "spec.http[0]: an http route cannot have both mirror and mirrors"},
		{vsHead + "  hosts: [a]\n  http:\n  - route: [{destination: {host: a}}]\n    mirrors: [{destination: {host: c}, percentage: {value: -1}}]\n", "spec.http[0].mirrors[0].percentage.value: -1 is not a percentage (0..100)"},
		{"apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n", "spec.servers[0].hosts: a server must have at least one host"},
		{"apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n", "spec.servers[0].tls: a server with protocol HTTPS must have TLS settings"},
		{"apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTPX}\n    hosts: [\"*\"]\n", `spec.servers[0].port.protocol: invalid protocol "HTTPX"`},
		{"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  action: ALLOWX\n", `spec.action: unknown value "ALLOWX"; want one of ALLOW, DENY, AUDIT, CUSTOM`},
		{"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules:\n  - from: [{source: {ipBlocks: [10.0.0.0/33]}}]\n", `spec.rules[0].from[0].source.ipBlocks[0]: "10.0.0.0/33" is not an IP address or CIDR range`},
		{"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules:\n  - when: [{key: request.colour, values: [red]}]\n", `spec.rules[0].when[0].key: unknown attribute "request.colour"`},
		{"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  mtls: {mode: STRICTER}\n", `spec.mtls.mode: unknown value "STRICTER"`},
		{"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  portLevelMtls: {\"8080\": {mode: DISABLE}}\n", "spec.portLevelMtls: port level mTLS settings need a workload selector"},
		{"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: a\n  subsets: [{name: v1}, {name: v1}]\n", `spec.subsets[1].name: duplicate subset name "v1"`},
		{"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: a\n  trafficPolicy: {outlierDetection: {maxEjectionPercent: 120}}\n", "spec.trafficPolicy.outlierDetection.maxEjectionPercent: 120 is not in range [0, 100]"},
		{"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: a\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}\n", "spec.trafficPolicy.connectionPool.tcp.maxConnections: must not be negative"},
	} {
		r := validate(t, c.doc)
		if !strings.Contains(strings.Join(r.Errors, "\n"), c.want) {
			t.Errorf("%s: errors %q, want %q", r, r.Errors, c.want)
		}
	}
}

func TestAccepted(t *testing.T) {
	for _, doc := range []string{
		// Weights that do not add up to 100 are normalized by Istio, not refused.
		vsHead + "  hosts: [profile]\n  http:\n  - route:\n    - {destination: {host: profile, subset: v1}, weight: 30}\n    - {destination: {host: profile, subset: v2}, weight: 30}\n    timeout: 500ms\n    retries: {attempts: 3, perTryTimeout: 1s, retryOn: \"5xx,503\"}\n",
		vsHead + "  hosts: [\"*\"]\n  gateways: [istio-system/web]\n  http:\n  - match: [{uri: {prefix: /dashboard}}]\n    route: [{destination: {host: dashboard}}]\n",
		"apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  selector: {istio: eastwestgateway}\n  servers:\n  - port: {number: 15443, name: tls, protocol: TLS}\n    tls: {mode: AUTO_PASSTHROUGH}\n    hosts: [\"*.local\"]\n",
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  selector: {matchLabels: {app: profile}}\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/multicluster/sa/sleep]}}]\n    to: [{operation: {methods: [GET], ports: [\"8080\"]}}]\n    when: [{key: \"request.headers[x-user]\", values: [a]}]\n",
		"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n",
		"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: profile\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true, failoverPriority: [topology.istio.io/network]}}\n    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s}\n",
	} {
		r := validate(t, doc)
		if len(r.Errors) > 0 || len(r.Warnings) > 0 {
			t.Errorf("%s: errors %q warnings %q, want none", r, r.Errors, r.Warnings)
		}
	}
}

// Fields isthmus does not act on are accepted with a warning naming them.
func TestUnsupportedWarnings(t *testing.T) {
	r := validate(t, vsHead+"  hosts: [a]\n  http:\n  - route: [{destination: {host: a}}]\n    mirror: {host: b}\n    corsPolicy: {allowOrigins: [{exact: x}]}\n    delegate: {name: d}\n")
	if len(r.Errors) > 0 || strings.Join(r.Warnings, "\n") != "spec.http[0].delegate: not supported by isthmus; ignored" {
		t.Errorf("errors %q warnings %q", r.Errors, r.Warnings)
	}
	r = validate(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  action: CUSTOM\n  provider: {name: ext-authz}\n")
	if len(r.Errors) > 0 || len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "spec.action: CUSTOM has no external authorizer") || !strings.Contains(r.Warnings[0], "denied") {
		t.Errorf("errors %q warnings %q", r.Errors, r.Warnings)
	}
	// Authorization fails closed, and says so.
	r = validate(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules:\n  - from: [{source: {requestPrincipals: [\"*\"]}}]\n    when: [{key: connection.sni, values: [a]}]\n")
	if want := "spec.rules[0].when[0].key: connection.sni not enforced by isthmus; an ALLOW rule with it allows nothing, a DENY rule denies as if it held"; len(r.Errors) > 0 || strings.Join(r.Warnings, "\n") != want {
		t.Errorf("errors %q warnings %q", r.Errors, r.Warnings)
	}
	if _, ok, _ := Object([]byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}`)); ok {
		t.Error("a ConfigMap is not Istio configuration")
	}
}

// Kinds isthmus does not act on are admitted with a warning saying so:
// nobody should believe an EnvoyFilter or a ServiceEntry took effect.
func TestKindsNotActedOnAreWarned(t *testing.T) {
	for _, c := range []struct{ doc, want string }{
		{"apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: f, namespace: ns}\nspec:\n  configPatches: []\n", "applies no EnvoyFilter patches"},
		{"apiVersion: telemetry.istio.io/v1alpha1\nkind: Telemetry\nmetadata: {name: t, namespace: istio-system}\nspec:\n  accessLogging: [{providers: [{name: envoy}]}]\n", "does not read Telemetry"},
		{"apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: vm, namespace: ns}\nspec:\n  template: {serviceAccount: vm}\n", "does not read WorkloadGroup"},
		{"apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: w, namespace: ns}\nspec:\n  url: oci://example/plugin\n", "runs no Wasm"},
	} {
		r := validate(t, c.doc)
		if len(r.Errors) > 0 || !strings.Contains(strings.Join(r.Warnings, "\n"), c.want) {
			t.Errorf("%s: errors %q warnings %q, want a warning saying %q", r, r.Errors, r.Warnings, c.want)
		}
	}
	// The Kubernetes kinds are not Istio's business.
	if _, ok, err := Object([]byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}`)); ok || err != nil {
		t.Errorf("a ConfigMap: ok %v, %v", ok, err)
	}
}

// Redirects, direct responses and regex rewrites are acted on: no warning;
// what Envoy could not do is refused.
func TestVirtualServiceAnswersItself(t *testing.T) {
	r := validate(t, vsHead+"  hosts: [a]\n  http:\n  - match: [{uri: {prefix: /old}}]\n    redirect: {uri: /new, authority: b, port: 8443, scheme: https, redirectCode: 302}\n"+
		"  - match: [{uri: {exact: /gone}}]\n    directResponse: {status: 410, body: {string: gone}}\n"+
		"  - rewrite: {uriRegexRewrite: {match: \"^/v1/(.*)\", rewrite: \"/\\\\1\"}}\n    route: [{destination: {host: a}}]\n")
	if len(r.Errors)+len(r.Warnings) > 0 {
		t.Errorf("errors %q warnings %q", r.Errors, r.Warnings)
	}
	for _, c := range []struct{ http, want string }{
		{"  - directResponse: {status: 700}\n", "spec.http[0].directResponse.status: 700 is not in the range 200..599"},
		{"  - redirect: {uri: /x, redirectCode: 200}\n", "spec.http[0].redirect.redirectCode: 200 is not a redirect code"},
		{"  - directResponse: {status: 200}\n    route: [{destination: {host: a}}]\n", "cannot have route or redirect"},
		{"  - rewrite: {uriRegexRewrite: {match: \"(\", rewrite: /}}\n    route: [{destination: {host: a}}]\n", "spec.http[0].rewrite.uriRegexRewrite.match"},
	} {
		r := validate(t, vsHead+"  hosts: [a]\n  http:\n"+c.http)
		if !strings.Contains(strings.Join(r.Errors, "\n"), c.want) {
			t.Errorf("%q: errors %q, want %q", c.http, r.Errors, c.want)
		}
	}
}

func TestHeaderOperations(t *testing.T) {
	r := validate(t, vsHead+"  hosts: [a]\n  http:\n  - headers: {request: {set: {x-a: \"1\"}, add: {x-b: \"2\"}, remove: [x-c]}, response: {set: {x-d: \"3\"}, remove: [server]}}\n"+
		"    route: [{destination: {host: a}, headers: {response: {add: {x-served-by: a}}}}]\n")
	if len(r.Errors)+len(r.Warnings) > 0 {
		t.Errorf("errors %q warnings %q", r.Errors, r.Warnings)
	}
	r = validate(t, vsHead+"  hosts: [a]\n  http:\n  - headers: {request: {set: {Host: b}}}\n    route: [{destination: {host: a}, headers: {request: {remove: [\":path\"]}}}]\n")
	if got := strings.Join(r.Errors, "\n"); !strings.Contains(got, `spec.http[0].headers.request: header "Host" cannot be changed`) || !strings.Contains(got, `spec.http[0].route[0].headers.request: header ":path"`) {
		t.Errorf("errors %q", r.Errors)
	}
}

// A route must not reframe messages or split them: framing fields, CR/LF
// in values and non-token CORS lists are refused.
func TestHeaderOperationsThatWouldSmuggle(t *testing.T) {
	for _, c := range []struct{ http, want string }{
		{"  - headers: {request: {set: {content-length: \"0\"}}}\n    route: [{destination: {host: a}}]\n", `header "content-length" cannot be changed: it frames the message`},
		{"  - headers: {response: {remove: [Transfer-Encoding]}}\n    route: [{destination: {host: a}}]\n", `header "Transfer-Encoding" cannot be changed`},
		{"  - headers: {response: {set: {x-a: \"b\\r\\nSet-Cookie: s=1\"}}}\n    route: [{destination: {host: a}}]\n", "x-a: header value"},
		{"  - corsPolicy: {allowOrigins: [{exact: o}], allowMethods: [\"GET\\r\\nSet-Cookie: s=1\"]}\n    route: [{destination: {host: a}}]\n", `spec.http[0].corsPolicy.allowMethods[0]`},
	} {
		r := validate(t, vsHead+"  hosts: [a]\n  http:\n"+c.http)
		if !strings.Contains(strings.Join(r.Errors, "\n"), c.want) {
			t.Errorf("%q: errors %q, want %q", c.http, r.Errors, c.want)
		}
	}
}

// A Sidecar's egress hosts and outbound policy are acted on; its ingress
// and per-port egress listeners are named; hosts not namespace/dnsName
// are refused.
func TestSidecar(t *testing.T) {
	r := validate(t, "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: ns}\nspec:\n  egress: [{hosts: ['./*', 'istio-system/*', '*/*.example.com']}]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n")
	if len(r.Errors) > 0 || len(r.Warnings) > 0 {
		t.Errorf("a plain Sidecar: errors %q warnings %q", r.Errors, r.Warnings)
	}
	r = validate(t, "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: ns}\nspec:\n  egress: [{port: {number: 80, protocol: HTTP, name: http}, hosts: [profile]}]\n  ingress: [{port: {number: 80, protocol: HTTP, name: h}, defaultEndpoint: '127.0.0.1:8080', tls: {mode: SIMPLE}}, {port: {number: 81, protocol: HTTP, name: i}, defaultEndpoint: 'localhost:80'}]\n")
	if e := strings.Join(r.Errors, "\n"); !strings.Contains(e, `"profile" is not namespace/dnsName`) || !strings.Contains(e, `spec.ingress[1].defaultEndpoint: "localhost:80"`) {
		t.Errorf("a host without a namespace: errors %q", r.Errors)
	}
	all := strings.Join(r.Warnings, "\n")
	for _, want := range []string{"spec.ingress[0].tls: not supported", "spec.egress[0].port: not supported"} {
		if !strings.Contains(all, want) {
			t.Errorf("no warning %q in:\n%s", want, all)
		}
	}
}

// A DestinationRule's client TLS is checked as Istio does.
func TestDestinationRuleTLS(t *testing.T) {
	r := validate(t, "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: ns}\nspec:\n  host: api.example.com\n  trafficPolicy:\n    tls: {mode: SIMPLE, sni: api.example.com, subjectAltNames: [api.example.com], credentialName: ca}\n")
	if len(r.Errors) > 0 || len(r.Warnings) > 0 {
		t.Errorf("SIMPLE with credentialName: errors %q warnings %q", r.Errors, r.Warnings)
	}
	r = validate(t, "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: ns}\nspec:\n  host: api.example.com\n  trafficPolicy:\n    portLevelSettings: [{port: {number: 443}, tls: {mode: MUTUAL, sni: 'a b', subjectAltNames: [''], credentialName: c, clientCertificate: /c.pem}}]\n")
	e := strings.Join(r.Errors, "\n")
	for _, want := range []string{"tls.sni", "subjectAltNames[0]", "credentialName excludes"} {
		if !strings.Contains(e, want) {
			t.Errorf("no error about %s in %q", want, r.Errors)
		}
	}
	if !strings.Contains(strings.Join(r.Warnings, "\n"), "tls.clientCertificate: not supported") {
		t.Errorf("clientCertificate not warned: %q", r.Warnings)
	}
}

// A WorkloadEntry is acted on; its weight and a DNS-name address are
// named, an entry without address or network refused.
func TestWorkloadEntry(t *testing.T) {
	r := validate(t, "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm, namespace: ns}\nspec:\n  address: 10.0.0.9\n  labels: {app: vm}\n  serviceAccount: vm\n  network: vm-net\n  locality: r/z\n  ports: {http: 8080}\n")
	if len(r.Errors) > 0 || len(r.Warnings) > 0 {
		t.Errorf("a plain WorkloadEntry: errors %q warnings %q", r.Errors, r.Warnings)
	}
	r = validate(t, "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm, namespace: ns}\nspec:\n  address: vm.example.com\n  weight: 3\n")
	all := strings.Join(r.Warnings, "\n")
	for _, want := range []string{"spec.weight: not supported", "spec.address: vm.example.com is not an IP address"} {
		if !strings.Contains(all, want) {
			t.Errorf("no warning %q in:\n%s", want, all)
		}
	}
	r = validate(t, "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm, namespace: ns}\nspec:\n  labels: {app: vm}\n  ports: {http: 0}\n")
	if e := strings.Join(r.Errors, "\n"); !strings.Contains(e, "an address is required") || !strings.Contains(e, "spec.ports[http]") {
		t.Errorf("no address, port 0: errors %q", r.Errors)
	}
}

// A ServiceEntry is acted on; what isthmus does not do of it is named.
func TestServiceEntryWarnings(t *testing.T) {
	r := validate(t, "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e, namespace: ns}\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 443, name: https, protocol: TLS}]\n  resolution: DNS\n")
	if len(r.Errors) > 0 || len(r.Warnings) > 0 {
		t.Errorf("a plain ServiceEntry: errors %q warnings %q", r.Errors, r.Warnings)
	}
	r = validate(t, "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e, namespace: ns}\nspec:\n  hosts: ['*.example.com']\n  addresses: [10.0.0.0/24]\n  exportTo: ['.']\n  workloadSelector: {labels: {app: vm}}\n  ports: [{number: 443, name: https, protocol: TLS}]\n  resolution: NONE\n")
	all := strings.Join(r.Warnings, "\n")
	for _, want := range []string{"spec.hosts[0]: wildcard host", "spec.addresses[0]: CIDR", "spec.exportTo: not supported"} {
		if !strings.Contains(all, want) {
			t.Errorf("no warning %q in:\n%s", want, all)
		}
	}
}
