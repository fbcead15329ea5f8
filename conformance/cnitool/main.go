// cnitool for the cni-rs conformance suite.
//
// Same command line and environment as upstream cnitool
// (github.com/containernetworking/cni/cnitool), built against Debian's libcni 1.1.2:
//
//	cnitool add|check|del <netname> <netns-path>
//	cnitool gc|status <netname>
//
// Environment: NETCONFPATH (default /etc/cni/net.d), CNI_PATH, CAP_ARGS (JSON object),
// CNI_ARGS (K=V;K=V), CNI_IFNAME (default eth0). Additions for the test suite:
// CNI_CONTAINERID (overrides the id derived from the netns path), CNI_CACHE_DIR (libcni's
// cache dir, default /var/lib/cni), CNI_VALID_ATTACHMENTS (JSON array of
// {"containerID","ifname"} for gc; default: empty list).
//
// libcni 1.1.2 knows neither GC nor STATUS (CNI spec 1.1), so `gc` and `status` are done
// here with pkg/invoke the way libcni 1.2 does them: each plugin of the list gets its own
// keys plus "name" and "cniVersion" (forced to 1.1.0), and for GC
// "cni.dev/valid-attachments"; CNI_COMMAND=GC/STATUS, CNI_PATH set, the other CNI_*
// variables empty. GC goes through every plugin and reports all errors; STATUS stops at
// the first one.
//
// On error: the message goes to stderr, the first CNI error found (if any) is printed as
// JSON on stdout, and the exit status is 1.
package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
)

const (
	EnvCNIPath          = "CNI_PATH"
	EnvNetDir           = "NETCONFPATH"
	EnvCapabilityArgs   = "CAP_ARGS"
	EnvCNIArgs          = "CNI_ARGS"
	EnvCNIIfname        = "CNI_IFNAME"
	EnvContainerID      = "CNI_CONTAINERID"
	EnvCacheDir         = "CNI_CACHE_DIR"
	EnvValidAttachments = "CNI_VALID_ATTACHMENTS"

	DefaultNetDir = "/etc/cni/net.d"

	CmdAdd    = "add"
	CmdCheck  = "check"
	CmdDel    = "del"
	CmdGC     = "gc"
	CmdStatus = "status"

	// The spec version GC and STATUS are sent with.
	gcStatusVersion = "1.1.0"
)

// gcAttachment is one entry of "cni.dev/valid-attachments" (types.GCAttachment in libcni 1.2).
type gcAttachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

func parseArgs(args string) ([][2]string, error) {
	var result [][2]string

	pairs := strings.Split(args, ";")
	for _, pair := range pairs {
		kv := strings.Split(pair, "=")
		if len(kv) != 2 || kv[0] == "" || kv[1] == "" {
			return nil, fmt.Errorf("invalid CNI_ARGS pair %q", pair)
		}

		result = append(result, [2]string{kv[0], kv[1]})
	}

	return result, nil
}

func main() {
	if len(os.Args) < 3 {
		usage()
	}
	cmd := os.Args[1]
	switch cmd {
	case CmdAdd, CmdCheck, CmdDel:
		if len(os.Args) < 4 {
			usage()
		}
	case CmdGC, CmdStatus:
	default:
		usage()
	}

	netdir := os.Getenv(EnvNetDir)
	if netdir == "" {
		netdir = DefaultNetDir
	}
	netconf, err := libcni.LoadConfList(netdir, os.Args[2])
	if err != nil {
		exit(err)
	}

	cniPath := filepath.SplitList(os.Getenv(EnvCNIPath))

	switch cmd {
	case CmdGC:
		exitAll(gcNetworkList(context.TODO(), cniPath, netconf))
	case CmdStatus:
		exit(statusNetworkList(context.TODO(), cniPath, netconf))
	}

	var capabilityArgs map[string]interface{}
	capabilityArgsValue := os.Getenv(EnvCapabilityArgs)
	if len(capabilityArgsValue) > 0 {
		if err = json.Unmarshal([]byte(capabilityArgsValue), &capabilityArgs); err != nil {
			exit(fmt.Errorf("%s: %w", EnvCapabilityArgs, err))
		}
	}

	var cniArgs [][2]string
	args := os.Getenv(EnvCNIArgs)
	if len(args) > 0 {
		cniArgs, err = parseArgs(args)
		if err != nil {
			exit(err)
		}
	}

	ifName, ok := os.LookupEnv(EnvCNIIfname)
	if !ok {
		ifName = "eth0"
	}

	netns, err := filepath.Abs(os.Args[3])
	if err != nil {
		exit(err)
	}

	// Generate the container id by hashing the netns path, like upstream cnitool,
	// unless the caller chose one.
	containerID := os.Getenv(EnvContainerID)
	if containerID == "" {
		s := sha512.Sum512([]byte(netns))
		containerID = fmt.Sprintf("cnitool-%x", s[:10])
	}

	cninet := libcni.NewCNIConfigWithCacheDir(cniPath, os.Getenv(EnvCacheDir), nil)

	rt := &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netns,
		IfName:         ifName,
		Args:           cniArgs,
		CapabilityArgs: capabilityArgs,
	}

	switch cmd {
	case CmdAdd:
		result, err := cninet.AddNetworkList(context.TODO(), netconf, rt)
		if result != nil {
			_ = result.Print()
		}
		exit(err)
	case CmdCheck:
		exit(cninet.CheckNetworkList(context.TODO(), netconf, rt))
	case CmdDel:
		exit(cninet.DelNetworkList(context.TODO(), netconf, rt))
	}
}

// pluginConfig builds the stdin of one plugin of the list for GC/STATUS: its own keys plus
// the list's name and the 1.1.0 version (libcni 1.2 GCNetworkList/GetStatusNetworkList).
func pluginConfig(list *libcni.NetworkConfigList, plugin *libcni.NetworkConfig, extra map[string]interface{}) (*libcni.NetworkConfig, error) {
	inject := map[string]interface{}{
		"name":       list.Name,
		"cniVersion": gcStatusVersion,
	}
	for k, v := range extra {
		inject[k] = v
	}
	return libcni.InjectConf(plugin, inject)
}

func execNoResult(ctx context.Context, cniPath []string, command string, conf *libcni.NetworkConfig) error {
	pluginPath, err := invoke.FindInPath(conf.Network.Type, cniPath)
	if err != nil {
		return err
	}
	args := &invoke.Args{
		Command: command,
		Path:    strings.Join(cniPath, string(os.PathListSeparator)),
	}
	return invoke.ExecPluginWithoutResult(ctx, pluginPath, conf.Bytes, args, nil)
}

func gcNetworkList(ctx context.Context, cniPath []string, list *libcni.NetworkConfigList) []error {
	// libcni 1.2: a list with "disableGC": true is never garbage-collected.
	var raw struct {
		DisableGC bool `json:"disableGC"`
	}
	if err := json.Unmarshal(list.Bytes, &raw); err == nil && raw.DisableGC {
		return nil
	}
	valid := []gcAttachment{}
	if raw := os.Getenv(EnvValidAttachments); raw != "" {
		if err := json.Unmarshal([]byte(raw), &valid); err != nil {
			return []error{fmt.Errorf("%s: %w", EnvValidAttachments, err)}
		}
		if valid == nil {
			valid = []gcAttachment{}
		}
	}

	var errs []error
	for _, plugin := range list.Plugins {
		conf, err := pluginConfig(list, plugin, map[string]interface{}{"cni.dev/valid-attachments": valid})
		if err != nil {
			errs = append(errs, fmt.Errorf("failed to generate configuration to GC plugin %s: %w", plugin.Network.Type, err))
			continue
		}
		if err := execNoResult(ctx, cniPath, "GC", conf); err != nil {
			errs = append(errs, fmt.Errorf("failed to GC plugin %s: %w", plugin.Network.Type, err))
		}
	}
	return errs
}

func statusNetworkList(ctx context.Context, cniPath []string, list *libcni.NetworkConfigList) error {
	for _, plugin := range list.Plugins {
		conf, err := pluginConfig(list, plugin, nil)
		if err != nil {
			return fmt.Errorf("failed to generate configuration to get plugin STATUS %s: %w", plugin.Network.Type, err)
		}
		if err := execNoResult(ctx, cniPath, "STATUS", conf); err != nil {
			return err
		}
	}
	return nil
}

func usage() {
	exe := filepath.Base(os.Args[0])

	fmt.Fprintf(os.Stderr, "%s: Add, check, remove, gc or status network interfaces from a network namespace\n", exe)
	fmt.Fprintf(os.Stderr, "  %s add   <net> <netns>\n", exe)
	fmt.Fprintf(os.Stderr, "  %s check <net> <netns>\n", exe)
	fmt.Fprintf(os.Stderr, "  %s del   <net> <netns>\n", exe)
	fmt.Fprintf(os.Stderr, "  %s gc     <net>\n", exe)
	fmt.Fprintf(os.Stderr, "  %s status <net>\n", exe)
	os.Exit(2)
}

func exit(err error) {
	if err == nil {
		os.Exit(0)
	}
	exitAll([]error{err})
}

// exitAll prints every error on stderr, the first CNI error as JSON on stdout, and exits 1.
func exitAll(errs []error) {
	if len(errs) == 0 {
		os.Exit(0)
	}
	var first *types.Error
	for _, err := range errs {
		fmt.Fprintf(os.Stderr, "%s\n", err)
		var cniErr *types.Error
		if first == nil && errors.As(err, &cniErr) {
			first = cniErr
		}
	}
	if first != nil {
		if data, err := json.Marshal(first); err == nil {
			fmt.Fprintf(os.Stdout, "%s\n", data)
		}
	}
	os.Exit(1)
}
