// Command pause is the sandbox process of every pod on the e2e cluster's real node: it holds
// the pod's namespaces open and does nothing else, as Kubernetes' own pause container does
// (registry.k8s.io/pause, which cannot be pulled here). It exits on SIGINT or SIGTERM and reaps
// any child re-parented to it, since it is PID 1 of a pod that shares its process namespace.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			return
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
