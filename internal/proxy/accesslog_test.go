package proxy

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	filelogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/isthmus-mesh/isthmus/internal/proxy/xdsclient"
)

// The access log a listener's connection manager names (meshConfig's,
// from the control plane) is where its requests go, in its format; one
// the proxy cannot open refuses the configuration.
func TestAccessLogFromTheListener(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	path := filepath.Join(t.TempDir(), "access.log")
	js, _ := structpb.NewStruct(map[string]any{"code": "%RESPONSE_CODE%"})
	logTo := func(path string) func(*hcm.HttpConnectionManager) {
		return func(m *hcm.HttpConnectionManager) {
			m.AccessLog = []*accesslogv3.AccessLog{{Name: "envoy.access_loggers.file", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(t,
				&filelogv3.FileAccessLog{Path: path, AccessLogFormat: &filelogv3.FileAccessLog_LogFormat{LogFormat: &core.SubstitutionFormatString{
					Format: &core.SubstitutionFormatString_JsonFormat{JsonFormat: js}}}})}}}
		}
	}
	_, front := startProxy(t, strings.TrimPrefix(up.URL, "http://"), nil, nil, logTo(path))
	req, _ := http.NewRequest("GET", "http://"+front+"/hello", nil)
	req.Header.Set("X-Request-Id", "req-42")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"request_id":"req-42"`) || !strings.Contains(string(b), `"path":"/hello"`) {
		t.Errorf("access log %s:\n%s", path, b)
	}

	// A path the proxy cannot write: NACK, the running configuration stays.
	m := &hcm.HttpConnectionManager{StatPrefix: "x", RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{Name: "x"}},
		HttpFilters: []*hcm.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}}}}
	logTo(filepath.Join(t.TempDir(), "missing-dir", "access.log"))(m)
	st := xdsclient.State{resource.ListenerType: {"x": mustAny(t, &listener.Listener{Name: "x", Address: socket(netip.MustParseAddrPort("127.0.0.1:1")), FilterChains: []*listener.FilterChain{{
		Filters: []*listener.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(t, m)}}}}}})}}
	if _, err := New(Options{Log: slog.New(slog.DiscardHandler)}).Apply(st, resource.ListenerType); err == nil || !strings.Contains(err.Error(), "access log") {
		t.Errorf("an access log that cannot be opened: %v, want a refusal", err)
	}
}
