// Command pause is the pod sandbox process of the cluster e2e's node: the container that holds a
// pod's network namespace while its app containers come and go (the role of registry.k8s.io/pause).
// It waits for SIGINT or SIGTERM and exits 0. The harness packs it into a FROM-scratch image and
// imports it into the node's containerd, so no registry is needed.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}
