package httpfield

import "testing"

func TestWhatConfigurationMayTouch(t *testing.T) {
	for _, name := range []string{"x-user", "Cache-Control", "x-b3-traceid"} {
		if err := Settable(name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, name := range []string{"", ":path", "Host", "Content-Length", "transfer-encoding", "Connection", "upgrade", "te", "x a", "x\r\ny"} {
		if Settable(name) == nil {
			t.Errorf("%q may be set", name)
		}
	}
	if ValidValue("a\tb 100%") != nil || ValidValue("a\r\nSet-Cookie: x") == nil || ValidValue("a\x00") == nil {
		t.Error("values")
	}
	if TokenList("GET, POST,PUT") != nil || TokenList("*") != nil || TokenList("GET\r\nX: y") == nil || TokenList("a b") == nil {
		t.Error("token lists")
	}
}
