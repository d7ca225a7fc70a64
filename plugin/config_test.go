package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseConf(t *testing.T) {
	deep := strings.Repeat("[", 20000) + strings.Repeat("]", 20000)
	cases := []struct {
		name  string
		stdin string
		code  int // 0: accepted
	}{
		{"minimal", `{"cniVersion":"1.0.0"}`, 0},
		{"every key", `{"cniVersion":"0.3.1","name":"n","socket":"/run/x.sock","delSpool":"/run/s",` +
			`"pluginLogFile":"/var/log/p.log","pluginLogLevel":"FATAL"}`, 0},
		{"null log keys", `{"cniVersion":"1.1.0","pluginLogFile":null,"pluginLogLevel":null}`, 0},
		{"log to stderr", `{"cniVersion":"1.1.0","pluginLogFile":"stderr"}`, 0},
		{"not json", `{not json`, codeDecodeFailure},
		{"a list", `["a list"]`, codeDecodeFailure},
		{"null", `null`, codeDecodeFailure},
		{"not utf-8", "\xff\xfe", codeDecodeFailure},
		{"deeply nested", `{"cniVersion":"1.0.0","x":` + deep + `}`, codeDecodeFailure},
		{"empty", ``, codeDecodeFailure},
		{"no version", `{"name":"n"}`, codeInvalidConfig},
		{"version not a string", `{"cniVersion":1}`, codeInvalidConfig},
		{"old version", `{"cniVersion":"0.2.0"}`, codeIncompatibleVersion},
		{"future version", `{"cniVersion":"1.2.0"}`, codeIncompatibleVersion},
		{"relative socket", `{"cniVersion":"1.0.0","socket":"a.sock"}`, codeInvalidConfig},
		{"socket not a string", `{"cniVersion":"1.0.0","socket":7}`, codeInvalidConfig},
		{"socket null", `{"cniVersion":"1.0.0","socket":null}`, codeInvalidConfig},
		{"socket too long", `{"cniVersion":"1.0.0","socket":"/run/` + strings.Repeat("x", 103) + `"}`, codeInvalidConfig},
		{"NUL in socket", `{"cniVersion":"1.0.0","socket":"/run/a\u0000b"}`, codeInvalidConfig},
		{"relative spool", `{"cniVersion":"1.0.0","delSpool":"spool"}`, codeInvalidConfig},
		{"log file not a string", `{"cniVersion":"1.0.0","pluginLogFile":3}`, codeInvalidConfig},
		{"NUL in log file", `{"cniVersion":"1.0.0","pluginLogFile":"/tmp/a\u0000b"}`, codeInvalidConfig},
		{"unknown level", `{"cniVersion":"1.0.0","pluginLogLevel":"chatty"}`, codeInvalidConfig},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conf, err := parseConf([]byte(c.stdin))
			if c.code == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if conf.Spool == "" || conf.Socket == "" {
					t.Fatalf("defaults not set: %+v", conf)
				}
				return
			}
			cerr, ok := err.(*cniError)
			if !ok || cerr.Code != c.code {
				t.Fatalf("got %v, want code %d", err, c.code)
			}
		})
	}
}

func TestSpoolDefaultsBesideTheSocket(t *testing.T) {
	conf, err := parseConf([]byte(`{"cniVersion":"1.0.0","socket":"/var/run/vpcni/agent.sock"}`))
	if err != nil || conf.Spool != "/var/run/vpcni/del-spool" {
		t.Fatalf("spool %q, err %v", conf.Spool, err)
	}
}

func TestValidAttachments(t *testing.T) {
	cases := []struct {
		stdin string
		want  string // "" = refused
	}{
		{`{"cniVersion":"1.1.0","cni.dev/valid-attachments":[{"containerID":"a"}]}`, `[{"containerID":"a"}]`},
		{`{"cniVersion":"1.1.0","cni.dev/attachments":[]}`, `[]`},
		{`{"cniVersion":"1.1.0","cni.dev/valid-attachments":[],"cni.dev/attachments":[1]}`, `[]`},
		{`{"cniVersion":"1.1.0"}`, ""},
		{`{"cniVersion":"1.1.0","cni.dev/valid-attachments":null}`, ""},
		{`{"cniVersion":"1.1.0","cni.dev/valid-attachments":{}}`, ""},
	}
	for _, c := range cases {
		conf, err := parseConf([]byte(c.stdin))
		if err != nil {
			t.Fatal(err)
		}
		got, err := conf.validAttachments()
		if string(got) != c.want || (c.want == "") != (err != nil) {
			t.Errorf("%s: got %s, %v", c.stdin, got, err)
		}
	}
}

func TestParseCNIArgs(t *testing.T) {
	pod := func(ns, name, infra, uid string) map[string]string {
		return map[string]string{"K8S_POD_NAMESPACE": ns, "K8S_POD_NAME": name,
			"K8S_POD_INFRA_CONTAINER_ID": infra, "K8S_POD_UID": uid}
	}
	cases := []struct {
		raw  string
		want map[string]string // nil: error 4
	}{
		{"", pod("", "", "", "")},
		{"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;" +
			"K8S_POD_UID=5f0c;K8S_POD_IP=ignored;", pod("default", "web-0", "abc", "5f0c")},
		{"K8S_POD_NAME=a=b", pod("", "a=b", "", "")},
		{"IgnoreUnknown=TRUE;X=1", pod("", "", "", "")},
		{"IgnoreUnknown=false;OTHER=1", nil},
		{"K8S_POD_NAME=a;FOO=bar", nil},
		{"K8S_POD_NAME", nil},
		{"=x", nil},
	}
	for _, c := range cases {
		got, err := parseCNIArgs(c.raw)
		if c.want == nil {
			if cerr, ok := err.(*cniError); !ok || cerr.Code != codeInvalidEnv {
				t.Errorf("%q: got %v, want error 4", c.raw, err)
			}
		} else if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: got %v, %v", c.raw, got, err)
		}
	}
}
