// Command etcd is upstream etcd's main (etcdmain), as in the official etcd image.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
