package proxyview

import (
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	filelogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/structpb"
)

// AccessLog is meshConfig's accessLogFile and accessLogEncoding, which
// every HTTP connection manager and TCP proxy carries as Envoy's file
// access log (Istio's access_log), so a change reaches running proxies.
type AccessLog struct {
	Path string
	JSON bool
}

// Istio's default access log formats (meshConfig accessLogFormat unset).
const istioTextFormat = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" " +
	"%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% " +
	"\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% " +
	"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" " +
	"\"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% " +
	"%DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"

var istioJSONFormat = map[string]any{
	"start_time": "%START_TIME%", "route_name": "%ROUTE_NAME%", "method": "%REQ(:METHOD)%",
	"path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "protocol": "%PROTOCOL%", "response_code": "%RESPONSE_CODE%",
	"response_flags": "%RESPONSE_FLAGS%", "response_code_details": "%RESPONSE_CODE_DETAILS%",
	"connection_termination_details":    "%CONNECTION_TERMINATION_DETAILS%",
	"upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%", "bytes_received": "%BYTES_RECEIVED%",
	"bytes_sent": "%BYTES_SENT%", "duration": "%DURATION%", "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
	"x_forwarded_for": "%REQ(X-FORWARDED-FOR)%", "user_agent": "%REQ(USER-AGENT)%", "request_id": "%REQ(X-REQUEST-ID)%",
	"authority": "%REQ(:AUTHORITY)%", "upstream_host": "%UPSTREAM_HOST%", "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
	"upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%", "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
	"downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%", "requested_server_name": "%REQUESTED_SERVER_NAME%",
}

// envoy is the access_log of a filter.
func (a *AccessLog) envoy() []*accesslogv3.AccessLog {
	f := &filelogv3.FileAccessLog{Path: a.Path}
	if a.JSON {
		js, _ := structpb.NewStruct(istioJSONFormat)
		f.AccessLogFormat = &filelogv3.FileAccessLog_LogFormat{LogFormat: &core.SubstitutionFormatString{
			Format: &core.SubstitutionFormatString_JsonFormat{JsonFormat: js}}}
	} else {
		f.AccessLogFormat = &filelogv3.FileAccessLog_LogFormat{LogFormat: &core.SubstitutionFormatString{
			Format: &core.SubstitutionFormatString_TextFormatSource{TextFormatSource: &core.DataSource{
				Specifier: &core.DataSource_InlineString{InlineString: istioTextFormat}}}}}
	}
	return []*accesslogv3.AccessLog{{Name: "envoy.access_loggers.file", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(f)}}}
}

// withFilters gives every HTTP connection manager and TCP proxy of the
// listeners the access log, and every HTTP connection manager the
// tracing (nothing without either). The listeners are the ones just
// generated, changed in place.
func withFilters(a *AccessLog, t *Tracing, listeners []types.Resource) {
	var logs []*accesslogv3.AccessLog
	if a != nil && a.Path != "" {
		logs = a.envoy()
	}
	if logs == nil && t == nil {
		return
	}
	var tracing *hcm.HttpConnectionManager_Tracing
	if t != nil {
		tracing = t.envoy()
	}
	for _, r := range listeners {
		l, ok := r.(*listener.Listener)
		if !ok {
			continue
		}
		chains := l.GetFilterChains()
		if l.GetDefaultFilterChain() != nil {
			chains = append(chains[:len(chains):len(chains)], l.GetDefaultFilterChain())
		}
		for _, fc := range chains {
			for _, f := range fc.GetFilters() {
				switch f.GetTypedConfig().GetTypeUrl() {
				case "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager":
					var m hcm.HttpConnectionManager
					if f.GetTypedConfig().UnmarshalTo(&m) == nil {
						m.AccessLog, m.Tracing = logs, tracing
						f.ConfigType = &listener.Filter_TypedConfig{TypedConfig: mustAny(&m)}
					}
				case "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy":
					if logs == nil {
						continue
					}
					var tp tcpproxy.TcpProxy
					if f.GetTypedConfig().UnmarshalTo(&tp) == nil {
						tp.AccessLog = logs
						f.ConfigType = &listener.Filter_TypedConfig{TypedConfig: mustAny(&tp)}
					}
				}
			}
		}
	}
}
