// Command etcd runs etcd's server from the go.etcd.io/etcd/server/v3 module (the etcd repository's
// own main module uses local replaces and cannot be built from the module proxy).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
