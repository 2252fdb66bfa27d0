// runc-fit: an OCI runtime wrapper for sandboxes that cannot grant everything a container asks for.
//
// Some build machines (this project's CI among them) run inside a VM or container whose capability
// bounding set lacks a few capabilities (CAP_SYS_RESOURCE here). A privileged container asks runc for
// every capability, and runc then fails with "unable to apply caps: operation not permitted"; a pod
// sandbox asks for oom_score_adj -998, which needs CAP_SYS_RESOURCE too. This wrapper edits the request
// to what the machine can give, then execs the real runc with the same arguments:
//   - capabilities outside this process's bounding set are dropped from every set;
//   - without CAP_SYS_RESOURCE, an oomScoreAdj below our own is raised to our own.
//
// It reads the bundle's config.json (create, run) or the --process file (exec). Registered as dockerd's
// default runtime by hack/docker-engine.sh, and as containerd's runc binary inside the locally built kind
// node image (hack/images/kind-node). Nothing of a user's Docker setup uses it.
//
//	RUNC_FIT_RUNTIME   the real runtime (default: runc from PATH)
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

const capSysResource = 24

// capabilityNames lists the kernel's capabilities by number (linux/capability.h).
var capabilityNames = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
	"CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
	"CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
	"CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

func main() {
	args := os.Args[1:]
	if err := fit(args); err != nil {
		fmt.Fprintf(os.Stderr, "runc-fit: %v\n", err)
		os.Exit(1)
	}
	runtime := os.Getenv("RUNC_FIT_RUNTIME")
	if runtime == "" {
		runtime = "runc"
	}
	path, err := exec.LookPath(runtime)
	if err != nil {
		fmt.Fprintf(os.Stderr, "runc-fit: %v\n", err)
		os.Exit(1)
	}
	if err := syscall.Exec(path, append([]string{runtime}, args...), os.Environ()); err != nil {
		fmt.Fprintf(os.Stderr, "runc-fit: exec %s: %v\n", path, err)
		os.Exit(1)
	}
}

// fit edits the spec the runc command line names, if any.
func fit(args []string) error {
	bounding, err := boundingSet()
	if err != nil {
		return err
	}
	ownOOM, err := ownOOMScoreAdj()
	if err != nil {
		return err
	}
	command, bundle, process := parse(args)
	switch {
	case (command == "create" || command == "run") && bundle != "":
		return editJSON(filepath.Join(bundle, "config.json"), func(spec map[string]any) {
			if proc, ok := spec["process"].(map[string]any); ok {
				fitProcess(proc, bounding, ownOOM)
			}
		})
	case command == "exec" && process != "":
		return editJSON(process, func(proc map[string]any) { fitProcess(proc, bounding, ownOOM) })
	}
	return nil
}

// parse finds the subcommand and its --bundle/-b and --process/-p values among runc's arguments.
func parse(args []string) (command, bundle, process string) {
	for i := 0; i < len(args); i++ {
		arg := args[i]
		value := func() string {
			if eq := strings.IndexByte(arg, '='); eq >= 0 {
				return arg[eq+1:]
			}
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		switch {
		case arg == "--bundle" || arg == "-b" || strings.HasPrefix(arg, "--bundle="):
			bundle = value()
		case arg == "--process" || arg == "-p" || strings.HasPrefix(arg, "--process="):
			process = value()
		case command == "" && !strings.HasPrefix(arg, "-"):
			command = arg
		case command == "" && takesValue(arg):
			i++ // a global option's value (--root DIR, --log FILE, ...), not the subcommand
		}
	}
	return command, bundle, process
}

func takesValue(arg string) bool {
	if strings.Contains(arg, "=") {
		return false
	}
	switch arg {
	case "--root", "--log", "--log-format", "--criu", "--rootless":
		return true
	}
	return false
}

func fitProcess(proc map[string]any, bounding map[string]bool, ownOOM int) {
	if caps, ok := proc["capabilities"].(map[string]any); ok {
		for set, list := range caps {
			names, ok := list.([]any)
			if !ok {
				continue
			}
			kept := []any{}
			for _, name := range names {
				if s, ok := name.(string); ok && bounding[s] {
					kept = append(kept, s)
				}
			}
			caps[set] = kept
		}
	}
	if adj, ok := proc["oomScoreAdj"].(float64); ok && !bounding[capabilityNames[capSysResource]] && int(adj) < ownOOM {
		proc["oomScoreAdj"] = ownOOM
	}
}

func editJSON(path string, edit func(map[string]any)) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	edit(doc)
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o600)
}

// boundingSet is the set of capability names this process may ever hold (CapBnd in /proc/self/status).
func boundingSet() (map[string]bool, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			if err != nil {
				return nil, err
			}
			set := map[string]bool{}
			for bit, name := range capabilityNames {
				if mask&(1<<bit) != 0 {
					set[name] = true
				}
			}
			return set, nil
		}
	}
	return nil, fmt.Errorf("no CapBnd line in /proc/self/status")
}

func ownOOMScoreAdj() (int, error) {
	data, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}
