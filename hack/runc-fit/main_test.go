package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestParseFindsCommandBundleAndProcess(t *testing.T) {
	cases := []struct {
		args                     []string
		command, bundle, process string
	}{
		{[]string{"--root", "/run/r", "--log", "/l", "create", "--bundle", "/b", "id"}, "create", "/b", ""},
		{[]string{"--root=/run/r", "create", "-b", "/b", "--pid-file", "/p", "id"}, "create", "/b", ""},
		{[]string{"--root", "/run/r", "exec", "--process", "/tmp/p.json", "--detach", "id"}, "exec", "", "/tmp/p.json"},
		{[]string{"--systemd-cgroup", "start", "id"}, "start", "", ""},
	}
	for _, c := range cases {
		command, bundle, process := parse(c.args)
		if command != c.command || bundle != c.bundle || process != c.process {
			t.Errorf("parse(%v) = %q %q %q", c.args, command, bundle, process)
		}
	}
}

func TestFitProcessDropsMissingCapabilitiesAndRaisesOOM(t *testing.T) {
	proc := map[string]any{
		"capabilities": map[string]any{
			"bounding":  []any{"CAP_CHOWN", "CAP_SYS_RESOURCE"},
			"effective": []any{"CAP_SYS_RESOURCE"},
		},
		"oomScoreAdj": float64(-998),
	}
	fitProcess(proc, map[string]bool{"CAP_CHOWN": true}, -500)
	want := map[string]any{"bounding": []any{"CAP_CHOWN"}, "effective": []any{}}
	if !reflect.DeepEqual(proc["capabilities"], want) {
		t.Errorf("capabilities = %v", proc["capabilities"])
	}
	if proc["oomScoreAdj"] != -500 {
		t.Errorf("oomScoreAdj = %v", proc["oomScoreAdj"])
	}
}

func TestFitKeepsWhatTheMachineAllows(t *testing.T) {
	proc := map[string]any{"oomScoreAdj": float64(-998)}
	fitProcess(proc, map[string]bool{"CAP_SYS_RESOURCE": true}, 0)
	if proc["oomScoreAdj"] != float64(-998) {
		t.Errorf("oomScoreAdj changed although CAP_SYS_RESOURCE is held: %v", proc["oomScoreAdj"])
	}
}

func TestEditJSONRewritesTheBundle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(path, []byte(`{"process":{"oomScoreAdj":-999},"root":{"path":"rootfs"}}`), 0o600)
	if err := editJSON(path, func(spec map[string]any) {
		fitProcess(spec["process"].(map[string]any), map[string]bool{}, 0)
	}); err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	data, _ := os.ReadFile(path)
	json.Unmarshal(data, &spec)
	if spec["process"].(map[string]any)["oomScoreAdj"] != float64(0) || spec["root"] == nil {
		t.Errorf("spec = %s", data)
	}
}
