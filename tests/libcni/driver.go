// Command driver runs the vpcni plugin through libcni, the library containerd and cri-o use,
// so that tests/test_libcni.py sees exactly what a runtime would: libcni's result parsing and
// version conversion, its result cache, and the prevResult it passes on CHECK and DEL.
//
//	driver [-bin DIR] [-cache DIR] add|check|del|cached CONF CONTAINERID NETNS IFNAME
//	driver [-bin DIR] version|validate CONF
//
// CONF is a .conflist (or a directory holding one, as a runtime loads /etc/cni/net.d).
// Success: the result (add, cached), the plugin's version info (version), the capabilities
// (validate) or {} as JSON on stdout, exit 0. Failure: {"error": ..., "code": N} on stdout,
// exit 1; code is the plugin's CNI error code, 0 when libcni itself refused.
// libcni 1.1.x has no GC or STATUS, so neither has the driver.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

func loadList(conf string) (*libcni.NetworkConfigList, error) {
	info, err := os.Stat(conf)
	if err != nil {
		return nil, err
	}
	if !info.IsDir() {
		return libcni.ConfListFromFile(conf)
	}
	// As a runtime does: the first file in lexical order; a single .conf is wrapped in a list.
	files, err := libcni.ConfFiles(conf, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no network config in %s", conf)
	}
	if filepath.Ext(files[0]) == ".conflist" {
		return libcni.ConfListFromFile(files[0])
	}
	single, err := libcni.ConfFromFile(files[0])
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromConf(single)
}

func emit(v interface{}) {
	out, err := json.Marshal(v)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(out))
}

func fail(err error) {
	code := uint(0)
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		code = cniErr.Code
	}
	out, _ := json.Marshal(map[string]interface{}{"error": err.Error(), "code": code})
	fmt.Println(string(out))
	os.Exit(1)
}

func main() {
	bin := flag.String("bin", "/opt/cni/bin", "plugin directory (CNIConfig.Path)")
	cache := flag.String("cache", "/var/lib/cni", "libcni cache directory")
	flag.Parse()
	args := flag.Args()
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: driver [-bin DIR] [-cache DIR] COMMAND CONF [CONTAINERID NETNS IFNAME]")
		os.Exit(2)
	}
	list, err := loadList(args[1])
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{*bin}, *cache, nil)
	ctx := context.Background()

	switch args[0] {
	case "version":
		info, err := cni.GetVersionInfo(ctx, list.Plugins[0].Network.Type)
		if err != nil {
			fail(err)
		}
		emit(map[string]interface{}{
			"supportedVersions": info.SupportedVersions(),
			"libcniVersion":     version.Current(),
		})
		return
	case "validate":
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			fail(err)
		}
		emit(map[string]interface{}{"capabilities": caps})
		return
	}

	if len(args) != 5 {
		fmt.Fprintln(os.Stderr, "add|check|del|cached need CONF CONTAINERID NETNS IFNAME")
		os.Exit(2)
	}
	containerID := args[2]
	rt := &libcni.RuntimeConf{
		ContainerID: containerID,
		NetNS:       args[3],
		IfName:      args[4],
		// What kubelet's CRI runtimes pass.
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "default"},
			{"K8S_POD_NAME", "pod-" + containerID},
			{"K8S_POD_INFRA_CONTAINER_ID", containerID},
			{"K8S_POD_UID", "uid-" + containerID},
		},
	}
	switch args[0] {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		emit(result)
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
		emit(map[string]string{})
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
		emit(map[string]string{})
	case "cached":
		result, err := cni.GetNetworkListCachedResult(list, rt)
		if err != nil {
			fail(err)
		}
		emit(result) // null when nothing is cached
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", args[0])
		os.Exit(2)
	}
}
