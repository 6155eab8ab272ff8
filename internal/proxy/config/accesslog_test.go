package config

import (
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filelogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	streamlogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// A filter's access_log is one file or stdout log; what the proxy cannot
// write as asked is refused (a NACK), not dropped.
func TestAccessLogs(t *testing.T) {
	log := func(name string, m proto.Message) *accesslogv3.AccessLog {
		a, _ := anypb.New(m)
		return &accesslogv3.AccessLog{Name: name, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: a}}
	}
	js, _ := structpb.NewStruct(map[string]any{"code": "%RESPONSE_CODE%"})
	jsonFile := log("envoy.access_loggers.file", &filelogv3.FileAccessLog{Path: "/var/log/a.log", AccessLogFormat: &filelogv3.FileAccessLog_LogFormat{
		LogFormat: &core.SubstitutionFormatString{Format: &core.SubstitutionFormatString_JsonFormat{JsonFormat: js}}}})
	for _, tc := range []struct {
		logs []*accesslogv3.AccessLog
		want *AccessLog
	}{
		{nil, nil},
		{[]*accesslogv3.AccessLog{jsonFile}, &AccessLog{Path: "/var/log/a.log", JSON: true}},
		{[]*accesslogv3.AccessLog{log("envoy.access_loggers.file", &filelogv3.FileAccessLog{Path: "/dev/stdout"})}, &AccessLog{Path: "/dev/stdout"}},
		{[]*accesslogv3.AccessLog{log("envoy.access_loggers.stdout", &streamlogv3.StdoutAccessLog{})}, &AccessLog{Path: "/dev/stdout"}},
	} {
		got, err := buildAccessLog(tc.logs)
		if err != nil || (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
			t.Errorf("%v: %+v %v, want %+v", tc.logs, got, err, tc.want)
		}
	}
	filtered := log("envoy.access_loggers.file", &filelogv3.FileAccessLog{Path: "/dev/stdout"})
	filtered.Filter = &accesslogv3.AccessLogFilter{}
	for name, logs := range map[string][]*accesslogv3.AccessLog{
		"two logs": {jsonFile, jsonFile},
		"gRPC":     {log("envoy.access_loggers.http_grpc", &grpclogv3.HttpGrpcAccessLogConfig{})},
		"a filter": {filtered},
		"no path":  {log("envoy.access_loggers.file", &filelogv3.FileAccessLog{})},
	} {
		if _, err := buildAccessLog(logs); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
